"""The checks of the GPU suite, against a device: each compares the native op on that device (the CUDA
kernels on "cuda", the CPU kernels on "cpu") with its plain-PyTorch reference, reusing the op tests'
cases and rules (tests/ops). Exact references are float64: on a GPU, float32 convolutions may run in
TF32 (torch.backends.cudnn.allow_tf32 is on by default), which is no yardstick for an fp16 kernel.

Shapes: those of the emulator tests, plus LLaVA-7B (D=4096, T=512) and ViT-L (224 px, patch 14,
D=1024: 256 patches and a class token)."""
import torch

from minilvlm.ops import patch_embed_reference
from tests.ops import test_fused_adamw_multi_op as adamw_multi_op
from tests.ops import test_fused_adamw_op as adamw_op
from tests.ops import test_mm_adapter_dropout_op as mm_dropout_op
from tests.ops import test_mm_adapter_op as mm_op
from tests.ops import test_patch_embed_op as pe_op

DTYPES = [torch.float32, torch.bfloat16, torch.float16]

VIT_L = dict(p=14, grid=(16, 16), batch=2, dim=1024, pixels=torch.uint8, channels_last=False, cls=True)
PATCH_EMBED_CASES = pe_op.EMU_CASES + [VIT_L]
LLAVA_7B = (2, 512, 4096, 8, 2, 2)     # B, T, D, r, groups, P: the decoder's adapters
VIT_L_TOKENS = (2, 257, 1024, 8, 2, 2)  # the tower's adapters
MM_ADAPTER_SHAPES = mm_op.EMU_SHAPES + [VIT_L_TOKENS, LLAVA_7B]
ADAMW_SIZES = [5, 1025, 3001, 4096 * 4096 + 17]


def within_rule(ours, torch_low, exact, dtype, fp32_tol=1e-5):
    """fp32: within fp32_tol of the exact result, or of twice torch's own fp32 error where that is
    larger; bf16/fp16: at most twice the error of torch's computation in that dtype."""
    rel_err = pe_op.rel_err
    bound = 2 * rel_err(torch_low, exact)
    return rel_err(ours, exact) <= (max(fp32_tol, bound) if dtype == torch.float32 else bound + 1e-6)


def check_patch_embed(case, dtype, device):
    """Forward and the gradients of weight, bias, pos_embed (and cls_token) on `device`."""
    args, kwargs = pe_op.make_case(**case, dtype=dtype, device=device)
    out = pe_op.run_native(torch.ops.minilvlm.patch_embed, args, kwargs)
    exact = patch_embed_reference(**pe_op.as_dtype(args, kwargs, torch.float64)[0],
                                  **pe_op.as_dtype(args, kwargs, torch.float64)[1])
    assert out.dtype == dtype and out.device.type == torch.device(device).type
    assert within_rule(out, patch_embed_reference(**args, **kwargs), exact, dtype), "forward"
    ours, torch_low, exact = pe_op.low_precision_grads(torch.ops.minilvlm.patch_embed_backward, case, dtype, device,
                                                       exact_dtype=torch.float64)
    for name, g, low, ref in zip(("weight", "bias", "pos_embed", "cls_token"), ours, torch_low, exact):
        assert g.dtype == dtype and within_rule(g, low, ref, dtype), name


def check_mm_adapter(shape, dtype, device):
    """Forward and all eight gradients on `device` (fp32 against float64; bf16/fp16 by the 2x rule,
    the forward also with float32 parameters and with small tokens), without and with dropout (the
    reference given the Philox mask that the kernels make)."""
    if dtype == torch.float32:
        mm_op.check_parity(torch.ops.minilvlm, shape, 5.0, device=device)
    else:
        mm_op.check_low_precision_grads(torch.ops.minilvlm, shape, dtype, device=device, exact_dtype=torch.float64)
        mm_op.check_bf16_forward(torch.ops.minilvlm, shape, 5.0, dtype=dtype, device=device)
    mm_dropout_op.check_dropout_parity(torch.ops.minilvlm, shape, dtype=dtype, device=device)


def check_fused_adamw(n, dtype, device):
    """Three steps over three segments against the reference (with master weights beside bf16/fp16),
    and a step skipped by found_inf that leaves every bit of every buffer."""
    op = torch.ops.minilvlm.fused_adamw_
    master = dtype != torch.float32
    adamw_op.check_against_reference(op, n, dtype, master, 0.5, device=device)
    adamw_op.check_skip(op, dtype, master, 1.0, n=max(n, 1025), device=device)


def check_fused_adamw_multi(dtype, device):
    """The multi-tensor op: odd sizes around the 65536-element chunk against the reference, 1,000 random
    sizes against torch.optim.AdamW (fp32), and the found_inf skip."""
    op = torch.ops.minilvlm.fused_adamw_multi_
    master = dtype != torch.float32
    adamw_multi_op.check_multi(op, adamw_multi_op.ODD_SIZES + [4096 * 4096 + 17], dtype, master, 0.5, device=device)
    if dtype == torch.float32:
        adamw_multi_op.check_against_torch_adamw(op, adamw_multi_op.random_sizes(1000, 70_000, 0), 2, device=device)
    adamw_multi_op.check_multi_skip(op, dtype, master, 1.0, device=device)
