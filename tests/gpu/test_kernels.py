"""Every CUDA kernel against its reference on the real device: the emulator tests' shapes plus LLaVA-7B
and ViT-L, in fp32, bf16 and fp16, with gradients (the checks are in checks.py)."""
import pytest
import torch

import minilvlm
from minilvlm.ops import patch_embed, use_native
from tests.gpu import GPU
from tests.gpu.checks import (ADAMW_SIZES, DTYPES, MM_ADAPTER_SHAPES, PATCH_EMBED_CASES, VIT_L, check_fused_adamw,
                              check_fused_adamw_multi, check_mm_adapter, check_patch_embed)
from tests.ops.test_patch_embed_op import case_id, make_case

pytestmark = GPU


def test_the_kernels_serve_this_device():
    """The build carries an image for this GPU: the ops take the kernels, not the fallback."""
    capability = torch.cuda.get_device_capability()
    assert torch.ops.minilvlm.built_with_cuda(), "minilvlm._C was built without its CUDA kernels"
    assert minilvlm.ops.has_kernel_image(torch.ops.minilvlm.cuda_archs(), capability), capability
    assert use_native(torch.device("cuda", torch.cuda.current_device()))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", PATCH_EMBED_CASES, ids=case_id)
def test_patch_embed(case, dtype):
    check_patch_embed(case, dtype, "cuda")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_patch_embed_under_cuda_autocast(dtype):
    """The ViT stem under fp16/bf16 autocast casts its fp32 parameters (fp16 used to raise)."""
    args, kwargs = make_case(**VIT_L, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        out = patch_embed(**args, **kwargs)
    expected = patch_embed(**{k: (v.to(dtype) if v is not None and k != "pixels" else v) for k, v in args.items()},
                           **dict(kwargs, cls_token=kwargs["cls_token"].to(dtype)))
    assert out.dtype == dtype and torch.equal(out, expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", MM_ADAPTER_SHAPES, ids=str)
def test_mm_adapter(shape, dtype):
    check_mm_adapter(shape, dtype, "cuda")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", ADAMW_SIZES)
def test_fused_adamw(n, dtype):
    check_fused_adamw(n, dtype, "cuda")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_adamw_multi(dtype):
    check_fused_adamw_multi(dtype, "cuda")
