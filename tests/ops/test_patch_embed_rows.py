"""patch_embed's pixel pass on its two CPU paths: the AVX-512 path writes pieces of up to 16 pixels
straight into the patch rows, the baseline path normalizes a whole pixel row and copies its pieces.
Both must give the same bits. With an identity weight (D = K) the op's output is its patch rows
exactly (x * 1 summed with zeros, in fp32 accumulation), so the rows are compared through the op."""
import hashlib
import os
import subprocess
import sys

import pytest
import torch

import minilvlm
from minilvlm.ops import patch_embed_reference

pytestmark = pytest.mark.skipif(not minilvlm.ops.native_available(), reason="minilvlm._C is not built")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# patch sizes across the one-masked-store limit (16), odd grids, both pixel types, every weight dtype
CASES = [(p, grid, pix, dtype) for p, grid in ((3, (2, 5)), (8, (3, 1)), (14, (2, 3)), (16, (1, 3)), (17, (2, 2)))
         for pix in ("uint8", "float32") for dtype in ("float32", "bfloat16", "float16", "float64")]


def rows_through_op(p, grid, pix, dtype):
    """The op's output with an identity weight: the normalized patch rows [B, N, K] in `dtype`."""
    g = torch.Generator().manual_seed(p * 100 + grid[1])
    shape = (2, 3, grid[0] * p, grid[1] * p)
    pixels = (torch.randint(0, 256, shape, generator=g, dtype=torch.uint8) if pix == "uint8"
              else torch.rand(shape, generator=g) * 3 - 1)
    k = 3 * p * p
    weight = torch.eye(k, dtype=getattr(torch, dtype)).view(k, 3, p, p)
    mean, std = [0.48, 0.46, 0.41], [0.27, 0.26, 0.28]
    out = torch.ops.minilvlm.patch_embed(pixels, weight, None, None, None, p, mean, std, False)
    return out, pixels, weight, mean, std


def digests():
    return [hashlib.sha256(rows_through_op(*case)[0].contiguous().view(torch.uint8).numpy()).hexdigest()
            for case in CASES]


def test_vector_path_rows_match_the_reference():
    for case in CASES:
        out, pixels, weight, mean, std = rows_through_op(*case)
        expected = patch_embed_reference(pixels, weight, None, None, patch_size=case[0], mean=mean, std=std)
        # one rounding apart at most: x * scale + shift against (x / 255 - mean) / std
        tol = {"float32": 1e-6, "float64": 1e-6, "bfloat16": 2 ** -7, "float16": 2 ** -10}[case[3]]
        torch.testing.assert_close(out.double(), expected.double(), rtol=tol, atol=tol, msg=str(case))


def test_vector_and_baseline_paths_give_the_same_bits():
    if not minilvlm.ops.cpu_capability().startswith("avx512"):
        pytest.skip("this CPU runs the baseline path only: there is no second path to compare")
    code = ("import minilvlm, tests.ops.test_patch_embed_rows as t\n"
            "assert minilvlm.ops.cpu_capability() == 'default'\n"
            "print(' '.join(t.digests()))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env=dict(os.environ, MINILVLM_CPU_CAPABILITY="default"))
    assert result.returncode == 0, result.stderr
    baseline = result.stdout.split()
    mismatched = [case for case, a, b in zip(CASES, digests(), baseline) if a != b]
    assert len(baseline) == len(CASES) and not mismatched, f"the two paths differ at {mismatched}"
