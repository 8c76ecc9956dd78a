"""Next-token cross-entropy straight from the decoder's final hidden states.

The plain form, `cross_entropy(lm_head(h)[:, :-1], labels[:, 1:])`, materializes fp32 logits for
every position ([B, T, V]) and then walks them several more times: the fp32 cast, the shift's
copy, log-softmax, its backward, the slice's zero-filled gradient. Here only the positions that
have a target go through the head, in row chunks of bounded size, and the gradient of each chunk
(softmax minus one-hot) is turned into the hidden-state and head gradients while it is still in
memory. The logits never exist for the whole batch, and backward only scales the saved gradients.
"""
import contextlib

import torch
import torch.nn.functional as F

IGNORE = -100
# Rows per chunk so that one chunk of fp32 logits stays near 64 MB.
_CHUNK_ELEMENTS = 16 * 1024 * 1024


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


class _HeadCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of h @ W^T + b against targets, gradients computed in forward."""

    @staticmethod
    def forward(ctx, h, weight, bias, targets, compute_dtype, chunk_rows, need_grads):
        # need_grads comes from the caller: grad mode is always off inside forward.
        ctx.dtypes = [None if t is None else t.dtype for t in (h, weight, bias)]
        w = weight.to(compute_dtype)
        b = bias.to(compute_dtype) if bias is not None else None
        hc = h.to(compute_dtype)
        acc = torch.promote_types(compute_dtype, torch.float32)  # fp32, or fp64 for gradcheck
        total = torch.zeros((), dtype=acc, device=h.device)
        dh = torch.empty_like(h) if need_grads[0] else None
        dw = db = None  # summed over chunks; the first chunk's part starts the sum (no zero fill)
        for start in range(0, h.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            logits = F.linear(hc[rows], w, b).to(acc)
            tgt = targets[rows]
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, tgt[:, None]).squeeze(1)).sum()
            if not any(need_grads):
                continue
            # d(loss)/d(logits) = softmax - one_hot, formed in place over the chunk's logits.
            grad = logits.sub_(lse[:, None]).exp_()
            grad[torch.arange(grad.shape[0], device=grad.device), tgt] -= 1
            if bias is not None and need_grads[2]:
                db = _accumulate(db, grad.sum(0))
            grad = grad.to(compute_dtype)
            if dh is not None:
                dh[rows] = grad @ w
            if need_grads[1]:
                dw = _accumulate(dw, (grad.t() @ hc[rows]).to(acc))
        if dw is None and need_grads[1]:  # no labelled position at all
            dw = torch.zeros(weight.shape, dtype=acc, device=h.device)
        if db is None and bias is not None and need_grads[2]:
            db = torch.zeros(weight.shape[0], dtype=acc, device=h.device)
        ctx.save_for_backward(dh, dw, db)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grads = [None if g is None else (g * grad_total).to(dtype)
                 for g, dtype in zip(ctx.saved_tensors, ctx.dtypes)]
        return (*grads, None, None, None, None)


def _accumulate(total, part):
    return part if total is None else total.add_(part)


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
    rows = chunk_rows or max(1, _CHUNK_ELEMENTS // vocab)
    grad_on = torch.is_grad_enabled()
    need_grads = [grad_on and t is not None and t.requires_grad for t in (flat, weight, bias)]
    with torch.autocast(device_type, enabled=False) if has_autocast else contextlib.nullcontext():
        total = _HeadCrossEntropy.apply(flat, weight, bias, targets, compute_dtype, rows, need_grads)
    return total, count
