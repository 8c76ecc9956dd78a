"""gelu (erf, tanh and quick forms) forward+backward against PyTorch on this CPU.

Run: python -m pytest -m bench tests/bench/test_gelu.py -s
Our op moves 5 elements per element: forward x in, y out; backward grad and x in, grad_x out. The
alternatives: F.gelu (PyTorch's native forward and backward kernels) for the erf and tanh forms, and
for quick_gelu the composition x * sigmoid(1.702 x) that CLIP and minilvlm/models/layers.py use.
Shapes: CLIP's ViT MLP (quick) and the llava projector (erf) at the benchmark's scale, and an MLP of
LLaMA-7B's width in each form.
"""
import pytest
import torch
import torch.nn.functional as F

from minilvlm.ops import gelu
from tests.bench.rowwise_bench import DTYPES, TOKENS, VIT_TOKENS, compare, leaf, run_table, training_step

pytestmark = pytest.mark.bench
CASES = [("llava ViT MLP 520x1024", VIT_TOKENS, 1024, "quick"), ("llava projector 512x512", 512, 512, "none"),
         ("7B-wide MLP 2048x11008", TOKENS, 11008, "none"), ("7B-wide MLP 2048x11008", TOKENS, 11008, "tanh"),
         ("7B-wide MLP 2048x11008", TOKENS, 11008, "quick")]
TORCH = {"none": ("F.gelu", lambda x: F.gelu(x)), "tanh": ("F.gelu(tanh)", lambda x: F.gelu(x, approximate="tanh")),
         "quick": ("x * sigmoid(1.702 x)", lambda x: x * torch.sigmoid(1.702 * x))}


def rows_for(name, tokens, dim, form, dtype):
    def add(rows, rmw):
        x = leaf(tokens, dim, dtype=dtype, seed=0, scale=2.0)
        grads = (leaf(tokens, dim, dtype=dtype, seed=3, grad=False),)
        torch_name, torch_fn = TORCH[form]
        compare(rows, f"{name} {form}", dtype, training_step(lambda a: gelu(a, form), (x,), grads),
                {torch_name: training_step(torch_fn, (x,), grads)}, 5 * x.numel() * x.element_size(), rmw)
    return add


def test_gelu_speed():
    rows = run_table("gelu", [rows_for(*case, dtype) for case in CASES for dtype in DTYPES])
    assert all(float(r[3]) > 0 for r in rows)
