"""rms_norm: the RMSNorm of LLaMA/Qwen2 blocks, with the residual add before it fused in.

    rms_norm(x, weight, eps=1e-6, residual=None) -> (y, s)

  s = x + residual (the next residual stream); s is x itself when residual is None
  y = weight * to_dtype(s * rsqrt(mean(s^2, -1) + eps))
Statistics in float32 (float64 for float64); the normalized s is cast back to the input dtype before
the weight multiplies it, as LLaMA and Qwen2 do (minilvlm/models/layers.py, `_RMSNormFunction`).
x and residual have any shape [..., D]; weight is [D]. All three are cast to one dtype first, their
promotion (so a bf16 x beside an fp32 residual gives fp32, as eager PyTorch would). Gradients flow to
x, residual (the same gradient) and weight, including the gradient of s when s is used later. A
model calls it once per norm: `h, stream = rms_norm(block_out, norm.weight, eps, residual=stream)`.

Native ops (schemas in csrc/common/schemas.h; kernels csrc/cpu/rms_norm.cpp, csrc/cuda/rms_norm.cu),
for float32, bfloat16 and float16 (float64 runs the reference):
  minilvlm::rms_norm(x, residual?, weight, eps) -> (y, s)      s is an empty [0] tensor without residual
  minilvlm::rms_norm_backward(grad_y, grad_s?, s, weight, eps, weight_grad) -> (grad_s_total, grad_weight)
The backward gets s (x without a residual) and recomputes rstd from it; nothing else is saved.
grad_weight is an empty [0] tensor unless weight_grad.

Under torch.autocast the op takes what autocast hands it and does not recast: its inputs' own dtype
(after the promotion above) is the dtype it computes and returns in.
"""
import torch

from minilvlm.ops._registry import use_native
from minilvlm.ops._rowwise import (NATIVE_DTYPES, check_channel_params, check_eps, check_floating, check_same_device,
                                   check_same_shape, contiguous_empty, to_common_dtype)


def _check(x, residual, weight, eps):
    check_floating("rms_norm", x=x, residual=residual, weight=weight)
    check_same_shape("rms_norm", "x", x=x, residual=residual)
    check_channel_params("rms_norm", x, weight=weight)
    check_eps("rms_norm", eps)
    check_same_device("rms_norm", "x", x=x, residual=residual, weight=weight)


def rms_norm_reference(x, weight, eps=1e-6, residual=None):
    """The specification, in plain PyTorch (any float dtype): (y, s)."""
    s = x if residual is None else x + residual
    s32 = s.to(torch.promote_types(s.dtype, torch.float32))
    rstd = torch.rsqrt(s32.square().mean(-1, keepdim=True) + eps)
    return weight * (s32 * rstd).to(s.dtype), s


def rms_norm(x, weight, eps=1e-6, residual=None):
    """(y, s) of the fused residual add and RMSNorm; the native kernel where one serves this device and dtype."""
    _check(x, residual, weight, eps)
    x, residual, weight = to_common_dtype(x, residual, weight)
    if x.dtype in NATIVE_DTYPES and use_native(x.device):
        y, s = torch.ops.minilvlm.rms_norm(x, residual, weight, float(eps))
        return y, (x if residual is None else s)
    return rms_norm_reference(x, weight, eps, residual)


def register_rms_norm(namespace="minilvlm"):
    """Fakes for `namespace`::rms_norm(_backward) and autograd for rms_norm through the native backward.

    minilvlm.ops registers them for minilvlm; tests register them for minilvlm_emu (the emulated CUDA kernels).
    """
    lib = getattr(torch.ops, namespace)

    @torch.library.register_fake(f"{namespace}::rms_norm")
    def _fake(x, residual, weight, eps):
        _check(x, residual, weight, eps)
        return contiguous_empty(x), contiguous_empty(x, x.shape if residual is not None else (0,))

    @torch.library.register_fake(f"{namespace}::rms_norm_backward")
    def _fake_backward(grad_y, grad_s, s, weight, eps, weight_grad):
        op = "rms_norm_backward"
        check_same_shape(op, "s", s=s, grad_y=grad_y, grad_s=grad_s)
        check_channel_params(op, s, weight=weight)
        check_same_device(op, "s", s=s, grad_y=grad_y, grad_s=grad_s, weight=weight)
        return contiguous_empty(s), contiguous_empty(weight, weight.shape if weight_grad else (0,))

    def _setup_context(ctx, inputs, output):
        x, residual, weight, eps = inputs
        ctx.has_residual = residual is not None
        ctx.save_for_backward(output[1] if ctx.has_residual else x, weight)
        ctx.eps = eps
        ctx.set_materialize_grads(False)  # an unused y or s gives None, not a tensor of zeros to read

    def _backward(ctx, grad_y, grad_s):
        s, weight = ctx.saved_tensors
        need_x, need_residual, need_weight = ctx.needs_input_grad[:3]
        grad_s = grad_s if ctx.has_residual else None
        if grad_y is None:  # only s was used: its gradient passes straight through
            grad_weight = torch.zeros_like(weight) if need_weight else None
            return grad_s, grad_s if need_residual else None, grad_weight, None
        grad_in, grad_weight = lib.rms_norm_backward(grad_y.contiguous(), grad_s, s, weight, ctx.eps, need_weight)
        return (grad_in if need_x else None, grad_in if need_residual else None,
                grad_weight if need_weight else None, None)

    torch.library.register_autograd(f"{namespace}::rms_norm", _backward, setup_context=_setup_context)
