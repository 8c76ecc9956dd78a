"""swiglu forward+backward against the PyTorch composition on this CPU.

Run: python -m pytest -m bench tests/bench/test_swiglu.py -s
The step of a LLaMA MLP's activation: y = silu(gate) * up, then the backward with gradients for gate
and up. Our op moves 8 elements per element: forward gate, up in, y out; backward grad, gate, up in,
grad_gate, grad_up out (sigmoid(gate) recomputed, nothing else saved). The alternative is
F.silu(gate) * up with autograd (it saves silu(gate), and its backward runs three kernels).
"""
import pytest
import torch.nn.functional as F

from minilvlm.ops import swiglu
from tests.bench.rowwise_bench import DTYPES, TOKENS, compare, leaf, run_table, training_step

pytestmark = pytest.mark.bench
CASES = [("llava LM MLP 2048x1408", TOKENS, 1408), ("LLaMA-7B MLP 2048x11008", TOKENS, 11008)]


def rows_for(name, tokens, dim, dtype):
    def add(rows, rmw):
        gate, up = leaf(tokens, dim, dtype=dtype, seed=0, scale=2.0), leaf(tokens, dim, dtype=dtype, seed=1)
        grads = (leaf(tokens, dim, dtype=dtype, seed=3, grad=False),)
        alternatives = {"F.silu(gate) * up": training_step(lambda g, u: F.silu(g) * u, (gate, up), grads)}
        compare(rows, name, dtype, training_step(swiglu, (gate, up), grads), alternatives,
                8 * gate.numel() * gate.element_size(), rmw)
    return add


def test_swiglu_speed():
    rows = run_table("swiglu", [rows_for(*case, dtype) for case in CASES for dtype in DTYPES])
    assert all(float(r[3]) > 0 for r in rows)
