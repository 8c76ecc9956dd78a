"""One question to a loaded model, with an optional image, answered token by token: the reply is
decoded after every new token and only the new text is handed to `on_text`, so a terminal shows
it as it is generated. Greedy when temperature is 0; else temperature and top-p sampling."""
from pathlib import Path

import torch

from minilvlm.data.labels import expand_images
from minilvlm.data.records import IMAGE_TAG, Record, Turn
from minilvlm.data.templates import render, stop_tokens
from minilvlm.device import autocast
from minilvlm.eval.generate import generate
from minilvlm.eval.load import LoadError

LAVIN_TEMPERATURE, LAVIN_TOP_P = 0.1, 0.75


class TextStream:
    """Turns streamed token ids into text pieces: the decoded reply so far, minus what was already
    emitted. The pieces concatenate to the decoding of all the ids."""

    def __init__(self, tokenizer, on_text):
        self.tokenizer, self.on_text = tokenizer, on_text
        self.ids, self.emitted = [], ""

    def __call__(self, token):
        self.ids.append(int(token[0]))
        text = self.tokenizer.decode(self.ids)
        if text.startswith(self.emitted):
            piece = text[len(self.emitted):]
        else:   # a decoder that rewrites earlier text (merged bytes): hold it until the end
            return
        if piece:
            self.emitted = text
            self.on_text(piece)

    def finish(self):
        text = self.tokenizer.decode(self.ids)
        if text != self.emitted and text.startswith(self.emitted):
            self.on_text(text[len(self.emitted):])
        self.emitted = text
        return text


def prompt_inputs(loaded, prompt, images=()):
    """(input_ids [1, T], images [N, 3, S, S]) for one user turn with any number of images (paths; a
    single path is taken as one). They go where the prompt's <image> tags are, in order, or all before
    the text when the prompt has none. The recipe prepares the turn as it prepared its training
    records (the mma recipe's "Image: N/A" before a text-only prompt)."""
    cfg, tokenizer = loaded.cfg, loaded.tokenizer
    images = [images] if isinstance(images, (str, Path)) else list(images or [])
    tags = prompt.count(IMAGE_TAG)
    if tags == 0 and images:
        prompt = f"{IMAGE_TAG}\n" * len(images) + prompt
    elif tags != len(images):
        raise LoadError(f"the prompt holds {tags} {IMAGE_TAG} tag(s) for {len(images)} image(s) (--image PATH, once "
                        f"per image); give one image per tag, or no tags")
    question = Record("prompt", [Turn("user", prompt)], images=[Path(p) for p in images])
    question, = loaded.recipe.prepare_records(cfg, [question])
    conversation = [{"role": t.role, "content": t.text} for t in question.turns]
    ids = render(conversation, tokenizer, cfg.data.template, generation_prompt=True).ids
    ids, _, _ = expand_images(ids, [False] * len(ids), tokenizer.image_token_id, loaded.model.config.image_tokens)
    return torch.tensor([ids], device=loaded.device), loaded.images.load_batch(question.images).to(loaded.device)


@torch.no_grad()
def ask(loaded, prompt, image=(), *, temperature=LAVIN_TEMPERATURE, top_p=LAVIN_TOP_P, max_new_tokens=64,
        on_text=None, seed=None):
    """The model's reply to `prompt` (with `image`: a path, or a list of paths); `on_text(piece)` streams it."""
    model, tokenizer = loaded.model, loaded.tokenizer
    ids, images = prompt_inputs(loaded, prompt, image)
    stream = TextStream(tokenizer, on_text or (lambda piece: None))
    generator = torch.Generator(loaded.device).manual_seed(seed) if seed is not None else None
    with autocast(loaded.device, loaded.cfg.train.precision):
        embeds, mask = model.generation_inputs(ids, images, torch.ones_like(ids))
        generate(model.lm, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                 temperature=temperature, top_p=top_p, stop_ids=stop_tokens(loaded.cfg.data.template, tokenizer),
                 pad_id=tokenizer.pad_id, generator=generator, on_token=stream)
    return stream.finish()
