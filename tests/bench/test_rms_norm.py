"""rms_norm with the residual add, forward+backward, against the best PyTorch compositions on this CPU.

Run: python -m pytest -m bench tests/bench/test_rms_norm.py -s
The step of a LLaMA block's norm: s = x + residual, y = rmsnorm(s) * weight, then the backward with
the gradients of both y and s (s is the next residual stream). Our op moves 8 elements per element:
forward x, residual in, y, s out; backward grad_y, grad_s, s in, grad_x out. The alternatives:
  add + F.rms_norm         s = x + r; F.rms_norm(s, (D,), weight, eps) (torch's own, with autograd)
  add + written-out       s = x + r; RMSNorm as an autograd.Function with its backward written out
                           in eager ops (what models/layers.py ran before this op: the best composition)
  add + composition        s = x + r; the Hugging Face LLaMA formula in eager ops
"""
import pytest
import torch
import torch.nn.functional as F

from minilvlm.ops import rms_norm
from tests.bench.rowwise_bench import DTYPES, TOKENS, compare, leaf, run_table, training_step

pytestmark = pytest.mark.bench
EPS = 1e-6
CASES = [("llava LM 2048x512", TOKENS, 512), ("LLaMA-7B 2048x4096", TOKENS, 4096)]


def add_then(norm):
    """s = x + r once, then y = norm(s): the unfused step, (y, s)."""
    def step(x, r, *params):
        s = x + r
        return norm(s, *params), s
    return step


class WrittenOutRMSNorm(torch.autograd.Function):
    """weight * (x * rsqrt(mean(x^2) + eps)), fp32 statistics, the backward in a few fused eager ops."""

    @staticmethod
    def forward(ctx, x, weight):
        x32 = x.float()
        rstd = torch.rsqrt(torch.linalg.vector_norm(x32, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(EPS))
        ctx.save_for_backward(x, weight, rstd)
        return weight * (x32 * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        x32, g32 = x.float(), grad.float()
        gw = g32 * weight.float()
        coef = torch.linalg.vecdot(gw, x32, dim=-1).unsqueeze(-1).mul_(rstd.square() / x.shape[-1])
        dx = torch.addcmul(gw, x32, coef, value=-1).mul_(rstd).to(x.dtype)
        dw = (g32 * (x32 * rstd).to(x.dtype).float()).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
        return dx, dw


def hf_composition(x, r, w):
    s = x + r
    s32 = s.float()
    return w * (s32 * torch.rsqrt(s32.pow(2).mean(-1, keepdim=True) + EPS)).to(s.dtype), s


def rows_for(name, tokens, dim, dtype):
    def add(rows, rmw):
        x, r = leaf(tokens, dim, dtype=dtype, seed=0), leaf(tokens, dim, dtype=dtype, seed=1)
        w = leaf(dim, dtype=dtype, seed=2, scale=0.1, shift=1.0)
        grads = (leaf(tokens, dim, dtype=dtype, seed=3, grad=False), leaf(tokens, dim, dtype=dtype, seed=4, grad=False))
        alternatives = {
            "add + F.rms_norm": training_step(add_then(lambda s, c: F.rms_norm(s, (dim,), c, EPS)), (x, r, w), grads),
            "add + written-out": training_step(add_then(WrittenOutRMSNorm.apply), (x, r, w), grads),
            "add + composition": training_step(hf_composition, (x, r, w), grads),
        }
        ours = training_step(lambda a, b, c: rms_norm(a, c, EPS, residual=b), (x, r, w), grads)
        compare(rows, name, dtype, ours, alternatives, 8 * x.numel() * x.element_size(), rmw)
    return add


def test_rms_norm_speed():
    rows = run_table("rms_norm + residual", [rows_for(*case, dtype) for case in CASES for dtype in DTYPES])
    assert all(float(r[3]) > 0 for r in rows)
