"""Held-out evaluation of a vision-language model by generation: greedy answers to each record's
first question, scored per question type (multiple choice by the letter in "The answer is X.",
free-form and text answers by exact match after normalizing case, spaces and punctuation)."""
import re
from collections import defaultdict

import torch

from minilvlm.data.images import load_image
from minilvlm.data.labels import expand_images
from minilvlm.data.templates import render, stop_tokens
from minilvlm.eval.generate import generate, left_pad

_LETTER = re.compile(r"answer is \(?([A-Z])\b")


def normalize(text):
    return re.sub(r"[^a-z0-9]+", "", text.lower())


def extract_letter(answer_text):
    """The option letter of "The answer is X" in a generated reply, or None when there is none."""
    found = _LETTER.search(answer_text)
    return found.group(1) if found else None


def is_correct(record, answer_text):
    expected = str(record.meta.get("answer", ""))
    if record.meta.get("question_type") == "multiple_choice":
        return extract_letter(answer_text) == expected
    return normalize(answer_text) == normalize(expected)


def _prompt(record, tokenizer, template, image_tokens):
    question = [{"role": t.role, "content": t.text} for t in record.turns[:-1]]
    ids = render(question, tokenizer, template, generation_prompt=True).ids
    expanded, _, _ = expand_images(ids, [False] * len(ids), tokenizer.image_token_id, image_tokens)
    return expanded


@torch.no_grad()
def evaluate(model, records, tokenizer, template, image_size, *, batch=64, max_new_tokens=8,
             blank_images=False, autocast_dtype=None, image_mode="pad"):
    """{'accuracy': {question_type: acc}, 'count': {...}, 'answers': [(record, text, correct)]}.
    Records need `meta['question_type']` and `meta['answer']` (the demo set has them)."""
    was_training = model.training
    model.eval()
    stops = stop_tokens(template, tokenizer)
    n_tokens = model.config.image_tokens
    answers = []
    for start in range(0, len(records), batch):
        chunk = records[start:start + batch]
        prompts = [_prompt(r, tokenizer, template, n_tokens) for r in chunk]
        images = [load_image(p, image_size, image_mode)
                  for r in chunk for p in r.images]
        images = torch.stack(images) if images else torch.empty(0, 3, image_size, image_size, dtype=torch.uint8)
        if blank_images:
            images = torch.full_like(images, 128)
        ids, mask = left_pad(prompts, tokenizer.pad_id)
        with torch.autocast(model.pixel_mean.device.type, dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            embeds, mask = model.generation_inputs(ids, images, mask)
            new = generate(model.lm, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                           stop_ids=stops, pad_id=tokenizer.pad_id)
        for record, row in zip(chunk, new.tolist()):
            text = tokenizer.decode(row)
            answers.append((record, text, is_correct(record, text)))
    model.train(was_training)
    return summarize(answers)


def summarize(answers):
    """Accuracy per question type and per task from [(record, text, correct)]."""
    hits, counts = defaultdict(int), defaultdict(int)
    for record, _, correct in answers:
        for key in (record.meta.get("question_type", "all"), f"task/{record.meta.get('task', '?')}"):
            counts[key] += 1
            hits[key] += int(correct)
    return {"accuracy": {k: hits[k] / counts[k] for k in counts}, "count": dict(counts), "answers": answers}
