"""Next-token cross-entropy straight from the decoder's final hidden states.

The plain form, `cross_entropy(lm_head(h)[:, :-1], labels[:, 1:])`, materializes fp32 logits for
every position ([B, T, V]) and then walks them several more times: the fp32 cast, the shift's
copy, log-softmax, its backward, the slice's zero-filled gradient. Here only the positions that
have a target go through the head, and they go through the linear_cross_entropy op
(minilvlm/ops/linear_cross_entropy.py): the head's GEMMs in row chunks, one fused pass per chunk
for the log-sum-exp, the loss and the gradient (softmax minus one-hot), which is turned into the
hidden-state and head gradients while it is in memory. The logits never exist for the whole batch,
and backward only scales the saved gradients.
"""
import torch

from minilvlm.ops import linear_cross_entropy

IGNORE = -100


def shifted_targets(labels, count=None):
    """(flat indices into the [B, T] positions that predict a token, their target ids): position t
    predicts labels[:, t + 1]; -100 means no target. With `count` (the number of such positions,
    known on the host, e.g. from the batch's CPU labels) the selection has a static size, so it
    neither waits for the device nor fails on the meta device."""
    targets = labels[:, 1:]
    keep = targets != IGNORE
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None] * labels.shape[1]
    cols = torch.arange(labels.shape[1] - 1, device=labels.device)[None, :]
    if count is None:
        return (rows + cols)[keep], targets[keep]
    picked = torch.nonzero_static(keep.reshape(-1), size=count).squeeze(1)
    return (rows + cols).reshape(-1).index_select(0, picked), targets.reshape(-1).index_select(0, picked)


def head_cross_entropy(hidden, labels, weight, bias=None, chunk_rows=None, count=None):
    """(summed next-token CE in fp32, number of labelled positions) for final hidden states
    hidden [B, T, D] (after the last norm), labels [B, T] aligned with the inputs (-100 ignored), and
    the LM head weight [V, D] (and bias [V]). Matches `cross_entropy(F.linear(hidden, weight, bias)
    [:, :-1], labels[:, 1:], reduction="sum")`, with the head's matmuls in the autocast dtype when
    autocast is on, as the plain form would run them. `count`, when the caller knows it (the
    trainer's batches carry it as n_targets), spares the device a host round trip: see
    shifted_targets. Label ids are range-checked where that costs nothing (labels on the CPU)."""
    if labels.shape != hidden.shape[:2]:
        raise ValueError(f"labels {list(labels.shape)} do not match the hidden states {list(hidden.shape[:2])}")
    index, targets = shifted_targets(labels, count)
    count = int(index.numel())
    vocab = weight.shape[0]
    if count and labels.device.type == "cpu" and (int(targets.min()) < 0 or int(targets.max()) >= vocab):
        bad = targets[(targets < 0) | (targets >= vocab)][:5].tolist()
        raise ValueError(f"label ids {bad} lie outside the vocabulary of {vocab} (use -100 for no target)")
    flat = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
    device_type = hidden.device.type
    has_autocast = device_type in ("cpu", "cuda")   # the meta device (the dry run) has none
    autocast = has_autocast and torch.is_autocast_enabled(device_type)
    compute_dtype = torch.get_autocast_dtype(device_type) if autocast else hidden.dtype
    total = linear_cross_entropy(flat, weight, bias, targets, compute_dtype=compute_dtype, chunk_rows=chunk_rows)
    return total, count
