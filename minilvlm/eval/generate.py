"""Batched decoding for our Decoder: greedy, temperature and top-p (nucleus) sampling, stop tokens,
left padding, with or without the KV cache. LaVIN decodes with temperature 0.1 and top-p 0.75."""
import torch


def left_pad(prompts, pad_id):
    """Token lists -> (input_ids, attention_mask) [B, T], padded on the left so every row ends at T-1
    and new tokens land in the same column of every row."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.as_tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return ids, mask


def top_p_filter(probs, top_p):
    """Zero every token outside the smallest set, taken from the most probable down, whose mass
    reaches top_p; the most probable token always stays. Rows are renormalized."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum(dim=-1, keepdim=True)


def next_token(logits, temperature=0.0, top_p=1.0, generator=None):
    """One token per row from logits [B, V]: argmax when temperature is 0, else a sample."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        probs = top_p_filter(probs, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model, input_ids=None, attention_mask=None, *, inputs_embeds=None, max_new_tokens=32,
             temperature=0.0, top_p=1.0, stop_ids=(), pad_id=0, use_cache=True, generator=None, on_token=None,
             stop_early=True):
    """New tokens [B, max_new_tokens or fewer] after left-padded prompts (input_ids, or inputs_embeds
    [B, T, D] for prompts that hold image features) with attention_mask [B, T] (1 = real token).
    A row that emits a stop id keeps it and is padded with pad_id after it; decoding ends when every
    row has stopped. Positions count real tokens only, so padding does not shift a row.
    on_token(tokens [B]) is called with each step's tokens as soon as they are chosen (streaming).
    stop_early=False runs all max_new_tokens steps (ranks of a sharded model must run the same
    forward passes, and checking whether every row stopped reads a value back from the device)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds")
    embeds = model.embed(input_ids) if inputs_embeds is None else inputs_embeds
    B, T, _ = embeds.shape
    mask = torch.ones(B, T, dtype=torch.long, device=embeds.device) if attention_mask is None else attention_mask
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    stop = torch.tensor(list(stop_ids), dtype=torch.long, device=embeds.device)
    finished = torch.zeros(B, dtype=torch.bool, device=embeds.device)
    cache = model.new_cache(B, T + max_new_tokens, dtype=embeds.dtype) if use_cache else None
    step_embeds, step_positions, out = embeds, positions, []
    for _ in range(max_new_tokens):
        logits = model(inputs_embeds=step_embeds, attention_mask=mask, position_ids=step_positions, cache=cache)
        token = next_token(logits[:, -1], temperature, top_p, generator)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        out.append(token)
        if on_token is not None:
            on_token(token)
        finished |= torch.isin(token, stop)
        if stop_early and finished.all():
            break
        new_embed = model.embed(token[:, None])
        new_position = positions[:, -1:] + 1
        positions = torch.cat((positions, new_position), dim=1)
        mask = torch.cat((mask, torch.ones_like(mask[:, :1])), dim=1)
        if use_cache:
            step_embeds, step_positions = new_embed, new_position
        else:
            embeds = torch.cat((embeds, new_embed), dim=1)
            step_embeds, step_positions = embeds, positions
    return torch.stack(out, dim=1)
