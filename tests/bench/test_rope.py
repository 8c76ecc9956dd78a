"""rope_ forward+backward (q and k rotated in place) against torch compositions on this CPU.

Run: python -m pytest -m bench tests/bench/test_rope.py -s
Shapes: the small llava of tests/bench/train_step_worker.py (batch 8 x 256 tokens, 8 heads of 64)
and LLaMA-7B width (32 heads of 128), q and k laid out as the decoder makes them (transposed views
of [B, T, H * hd] projections), fp32 and bf16. One step: q and k come out of an autograd identity
over two leaves (standing in for the projections, at no cost to anyone), are rotated, and the
backward runs with a fixed gradient. Alternatives, measured in the same run:
  hf rotate_half     transformers' q * cos + rotate_half(q) * sin with full-width [B, 1, T, hd] tables
                     in q's dtype, through autograd
  previous function  minilvlm's Python version before this op (out of place, a hand-written backward
                     of four elementwise calls), kept here as the baseline
GB/s counts the bytes our op must move: forward, the rotary channels of q and k read and written in
place; backward, the gradients read and the results written. "a.add_(b)" is this machine's
read-modify-write bandwidth (12 bytes per fp32 element), measured in the same run.
"""
import pytest
import torch

from minilvlm.ops import rope_, rope_tables
from tests.bench.common import median_ms, print_table, rmw_bandwidth_gbs

pytestmark = pytest.mark.bench

CASES = [  # name, batch, tokens, heads, head_dim
    ("small llava b8 T256 8x64", 8, 256, 8, 64),
    ("LLaMA-7B width b8 T256 32x128", 8, 256, 32, 128),
]


class _Fresh(torch.autograd.Function):
    """The identity, returning a new tensor over the same memory: a projection's output at no cost."""

    @staticmethod
    def forward(ctx, x):
        return x.detach()

    @staticmethod
    def backward(ctx, grad):
        return grad


def hf_rotate_half(q, k, cos, sin):
    full_cos = torch.cat((cos, cos), dim=-1)[:, None].to(q.dtype)
    full_sin = torch.cat((sin, sin), dim=-1)[:, None].to(q.dtype)

    def rotate_half(x):
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    return q * full_cos + rotate_half(q) * full_sin, k * full_cos + rotate_half(k) * full_sin


class _PreviousRope(torch.autograd.Function):
    """minilvlm's apply_rope before the op (cos, sin [B, 1, T, d] in the model's dtype)."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _previous_rotate(x, cos, sin, 1)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _previous_rotate(grad, cos, sin, -1), None, None


def _previous_rotate(x, cos, sin, sign):
    d = cos.shape[-1]
    half = d // 2
    c, s_ = cos[..., :half], sin[..., :half]
    x1, x2 = x[..., :half], x[..., half:d]
    out = torch.empty(torch.broadcast_shapes(x.shape, cos.shape[:-1] + (x.shape[-1],)),
                      dtype=torch.promote_types(x.dtype, cos.dtype), device=x.device)
    o1, o2 = out[..., :half], out[..., half:d]
    torch.mul(x1, c, out=o1)
    o1.addcmul_(x2, s_, value=-sign)
    torch.mul(x2, c, out=o2)
    o2.addcmul_(x1, s_, value=sign)
    if d < x.shape[-1]:
        out[..., d:] = x[..., d:]
    return out


def previous(q, k, cos, sin):
    full_cos = torch.cat((cos, cos), dim=-1)[:, None].to(q.dtype)
    full_sin = torch.cat((sin, sin), dim=-1)[:, None].to(q.dtype)
    return _PreviousRope.apply(q, full_cos, full_sin), _PreviousRope.apply(k, full_cos, full_sin)


def ours(q, k, cos, sin):
    return rope_(q, k, cos, sin)


def step_fn(fn, leaves, cos, sin, grads):
    def step():
        for t in leaves:
            t.grad = None
        q, k = (_Fresh.apply(t).view(t.shape).transpose(1, 2) for t in leaves)
        out_q, out_k = fn(q, k, cos, sin)
        torch.autograd.backward([out_q, out_k], grads)
    return step


def interleaved_ms(fns, rounds=5):
    """The best of `rounds` medians per function, the functions taking turns (outside load lands on all)."""
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], median_ms(fn, reps=7, warmup=2))
    return best


def test_rope_speed():
    rows = []
    limit = rmw_bandwidth_gbs()
    for name, batch, tokens, heads, hd in CASES:
        cos, sin = rope_tables(torch.arange(tokens).expand(batch, tokens), hd, 10000.0)
        for dtype in (torch.float32, torch.bfloat16):
            g = torch.Generator().manual_seed(0)
            leaves = [torch.randn(batch, tokens, heads, hd, generator=g).to(dtype).requires_grad_() for _ in range(2)]
            grads = [torch.randn(batch, heads, tokens, hd, generator=g).to(dtype) for _ in range(2)]
            impls = [("minilvlm rope_", ours), ("hf rotate_half", hf_rotate_half), ("previous function", previous)]
            times = interleaved_ms([step_fn(fn, leaves, cos, sin, grads) for _, fn in impls])
            best_torch = min(times[1:])
            moved = 2 * 2 * batch * tokens * heads * hd * dtype.itemsize * 2  # fwd + bwd, q and k, read + write
            for (label, _), ms in zip(impls, times):
                gbs = moved / ms / 1e6 if label.startswith("minilvlm") else None
                rows.append([name, str(dtype).split(".")[-1], label, f"{ms:.2f}",
                             f"{best_torch / ms:.2f}x" if label.startswith("minilvlm") else "",
                             "" if gbs is None else f"{gbs:.1f} ({100 * gbs / limit:.0f}% of a.add_(b))"])
    print_table(f"rope_ forward+backward, q and k; a.add_(b) = {limit:.1f} GB/s; {torch.get_num_threads()} threads",
                ["case", "dtype", "implementation", "median ms", "vs best torch", "GB/s"], rows)
    assert all(float(r[3]) > 0 for r in rows)
