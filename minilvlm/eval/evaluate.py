"""Held-out evaluation of a vision-language model by generation: greedy answers to each record's
last question, scored by minilvlm.eval.score."""
import torch

from minilvlm.data.labels import expand_images
from minilvlm.device import autocast
from minilvlm.data.templates import render, stop_tokens
from minilvlm.eval.generate import generate, left_pad
from minilvlm.eval.score import is_correct, summarize


def _prompt(record, tokenizer, template, image_tokens):
    question = [{"role": t.role, "content": t.text} for t in record.turns[:-1]]
    ids = render(question, tokenizer, template, generation_prompt=True).ids
    expanded, _, _ = expand_images(ids, [False] * len(ids), tokenizer.image_token_id, image_tokens)
    return expanded


@torch.no_grad()
def evaluate(model, records, tokenizer, template, images, *, batch=64, max_new_tokens=8, precision="fp32",
             batches=None):
    """{'accuracy': {question_type: acc}, 'count': {...}, 'answers': [(record, text, correct)]}.
    `images` is the run's minilvlm.data.images.ImageConfig; the model runs on its own device under
    the run's precision. Each reply is scored by minilvlm.eval.score against the record's `answer`
    metadata, or its last assistant reply when it has none. `batches`: run exactly that many
    generation batches, of max_new_tokens steps each (the ranks of an FSDP model must make the same
    forward passes); batches past the records generate from a one-token prompt and are thrown away."""
    was_training = model.training
    model.eval()
    stops = stop_tokens(template, tokenizer)
    device = model.lm.embed.weight.device
    lockstep = batches is not None
    batches = batches if lockstep else -(-len(records) // batch)
    answers = []
    for index in range(batches):
        chunk = records[index * batch:(index + 1) * batch]
        prompts = [_prompt(r, tokenizer, template, model.config.image_tokens) for r in chunk] or [[tokenizer.pad_id]]
        pictures = images.load_batch([p for r in chunk for p in r.images]).to(device)
        ids, mask = (t.to(device) for t in left_pad(prompts, tokenizer.pad_id))
        with autocast(device, precision):
            embeds, mask = model.generation_inputs(ids, pictures, mask)
            new = generate(model.lm, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                           stop_ids=stops, pad_id=tokenizer.pad_id, stop_early=not lockstep)
        for record, row in zip(chunk, new.tolist()):
            text = tokenizer.decode(row)
            answers.append((record, text, is_correct(record, text)))
    model.train(was_training)
    return summarize(answers)

