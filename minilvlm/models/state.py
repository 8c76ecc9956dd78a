"""Checking a state dict against a model's before loading it: every missing, unexpected and
wrong-shape tensor in one message, so a checkpoint that does not fit says all of why at once."""


def mismatch(expected, tensors, limit=8):
    """None when `tensors` has exactly the keys and shapes of `expected` (two {name: tensor} dicts),
    else "missing [...], unexpected [...], wrong shapes [...]" (the first `limit` of each)."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = sorted(f"{k}: {tuple(tensors[k].shape)} vs {tuple(v.shape)}"
                    for k, v in expected.items() if k in tensors and tuple(tensors[k].shape) != tuple(v.shape))
    if not (missing or unexpected or shapes):
        return None
    return f"missing {missing[:limit]}, unexpected {unexpected[:limit]}, wrong shapes {shapes[:limit]}"
