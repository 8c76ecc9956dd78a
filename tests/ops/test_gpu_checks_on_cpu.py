"""The GPU suite's checks (tests/gpu/checks.py) run on the CPU kernels with small shapes, so that the
checks themselves are exercised where no GPU is: a mistake in a check then fails here, not first on
a lent GPU. The GPU-sized shapes (LLaVA-7B, ViT-L) run only in tests/gpu."""
import pytest
import torch

import minilvlm
from tests.gpu import checks

pytestmark = pytest.mark.skipif(not minilvlm.ops.native_available(), reason="minilvlm._C is not built")


@pytest.mark.parametrize("dtype", checks.DTYPES, ids=str)
@pytest.mark.parametrize("case", checks.PATCH_EMBED_CASES[:2], ids=str)
def test_patch_embed_check(case, dtype):
    checks.check_patch_embed(case, dtype, "cpu")


@pytest.mark.parametrize("dtype", checks.DTYPES, ids=str)
def test_mm_adapter_check(dtype):
    checks.check_mm_adapter(checks.MM_ADAPTER_SHAPES[1], dtype, "cpu")


@pytest.mark.parametrize("dtype", checks.DTYPES, ids=str)
@pytest.mark.parametrize("n", checks.ADAMW_SIZES[:2])
def test_fused_adamw_check(n, dtype):
    checks.check_fused_adamw(n, dtype, "cpu")


def test_the_checks_fail_on_a_wrong_kernel(monkeypatch):
    """A kernel whose output is off by one bf16 ulp in one element fails the check."""
    real = torch.ops.minilvlm.patch_embed

    class Ops:
        def __getattr__(self, name):
            if name != "patch_embed":
                return getattr(torch.ops.minilvlm, name)

            def wrong(*args):
                out = real(*args)
                out.view(-1)[7] += out.abs().max() * 2 ** -6
                return out
            return wrong

    monkeypatch.setattr(torch.ops, "minilvlm", Ops())
    with pytest.raises(AssertionError, match="forward"):
        checks.check_patch_embed(checks.PATCH_EMBED_CASES[0], torch.float32, "cpu")
