"""layer_norm forward+backward against F.layer_norm on this CPU.

Run: python -m pytest -m bench tests/bench/test_layer_norm.py -s
The step of a ViT or Phi norm: y = layer_norm(x) * weight + bias, then the backward with gradients
for x, weight and bias. Our op moves 5 elements per element: forward x in, y out; backward grad_y
and x in, grad_x out. The alternative is PyTorch's fused F.layer_norm (its native CPU forward and
backward kernels).
"""
import pytest
import torch.nn.functional as F

from minilvlm.ops import layer_norm
from tests.bench.rowwise_bench import DTYPES, TOKENS, VIT_TOKENS, compare, leaf, run_table, training_step

pytestmark = pytest.mark.bench
EPS = 1e-5
CASES = [("llava ViT 520x256", VIT_TOKENS, 256), ("llava LM 2048x512", TOKENS, 512),
         ("LLaMA-7B 2048x4096", TOKENS, 4096)]


def rows_for(name, tokens, dim, dtype):
    def add(rows, rmw):
        x = leaf(tokens, dim, dtype=dtype, seed=0, scale=2.0, shift=0.5)
        w, b = leaf(dim, dtype=dtype, seed=1, scale=0.1, shift=1.0), leaf(dim, dtype=dtype, seed=2, scale=0.1)
        grads = (leaf(tokens, dim, dtype=dtype, seed=3, grad=False),)
        alternatives = {"F.layer_norm": training_step(lambda a, c, d: F.layer_norm(a, (dim,), c, d, EPS), (x, w, b), grads)}
        ours = training_step(lambda a, c, d: layer_norm(a, c, d, EPS), (x, w, b), grads)
        compare(rows, name, dtype, ours, alternatives, 5 * x.numel() * x.element_size(), rmw)
    return add


def test_layer_norm_speed():
    rows = run_table("layer_norm", [rows_for(*case, dtype) for case in CASES for dtype in DTYPES])
    assert all(float(r[3]) > 0 for r in rows)
