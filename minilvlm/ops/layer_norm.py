"""layer_norm: LayerNorm over the last dimension (the ViT's and Phi's norms).

    layer_norm(x, weight, bias=None, eps=1e-5) -> y

  y = (x - mean) * rsqrt(var + eps) * weight + bias, mean and (biased) var over the last dimension
Statistics in float32 (float64 for float64), the result rounded once to the input dtype; the same
numbers as F.layer_norm(x, (D,), weight, bias, eps). x is [..., D]; weight and bias are [D]. x,
weight and bias are cast to one dtype first, their promotion. Gradients flow to x, weight and bias.

Native ops (schemas in csrc/common/schemas.h; kernels csrc/cpu/layer_norm.cpp,
csrc/cuda/layer_norm.cu), for float32, bfloat16 and float16 (float64 runs the reference):
  minilvlm::layer_norm(x, weight, bias?, eps) -> y
  minilvlm::layer_norm_backward(grad_y, x, weight, eps, weight_grad, bias_grad)
      -> (grad_x, grad_weight, grad_bias)     a gradient not asked for is an empty [0] tensor
The backward recomputes mean and rstd from x (only x and weight are saved).

Under torch.autocast the op takes what autocast hands it and does not recast: its inputs' own dtype
(after the promotion above) is the dtype it computes and returns in. (F.layer_norm under autocast
computes in float32; a model that wants that casts x first.)
"""
import torch
import torch.nn.functional as F

from minilvlm.ops._registry import use_native
from minilvlm.ops._rowwise import (NATIVE_DTYPES, check_channel_params, check_eps, check_floating, check_same_device,
                                   check_same_shape, contiguous_empty, to_common_dtype)


def _check(x, weight, bias, eps, op="layer_norm"):
    check_floating(op, x=x, weight=weight, bias=bias)
    check_channel_params(op, x, weight=weight, bias=bias)
    check_eps(op, eps)
    check_same_device(op, "x", x=x, weight=weight, bias=bias)


def layer_norm_reference(x, weight, bias=None, eps=1e-5):
    """The specification, in plain PyTorch (any float dtype)."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def layer_norm(x, weight, bias=None, eps=1e-5):
    """LayerNorm over the last dimension; the native kernel where one serves this device and dtype."""
    _check(x, weight, bias, eps)
    x, weight, bias = to_common_dtype(x, weight, bias)
    if x.dtype in NATIVE_DTYPES and use_native(x.device):
        return torch.ops.minilvlm.layer_norm(x, weight, bias, float(eps))
    return layer_norm_reference(x, weight, bias, eps)


def register_layer_norm(namespace="minilvlm"):
    """Fakes for `namespace`::layer_norm(_backward) and autograd for layer_norm through the native backward.

    minilvlm.ops registers them for minilvlm; tests register them for minilvlm_emu (the emulated CUDA kernels).
    """
    lib = getattr(torch.ops, namespace)

    @torch.library.register_fake(f"{namespace}::layer_norm")
    def _fake(x, weight, bias, eps):
        _check(x, weight, bias, eps)
        return contiguous_empty(x)

    @torch.library.register_fake(f"{namespace}::layer_norm_backward")
    def _fake_backward(grad_y, x, weight, eps, weight_grad, bias_grad):
        op = "layer_norm_backward"
        _check(x, weight, None, eps, op)
        check_same_shape(op, "x", x=x, grad_y=grad_y)
        check_same_device(op, "x", x=x, grad_y=grad_y)
        return (contiguous_empty(x), contiguous_empty(weight, weight.shape if weight_grad else (0,)),
                contiguous_empty(weight, weight.shape if bias_grad else (0,)))

    def _setup_context(ctx, inputs, output):
        x, weight, bias, eps = inputs
        ctx.save_for_backward(x, weight)
        ctx.eps = eps

    def _backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_x, grad_weight, grad_bias = lib.layer_norm_backward(grad_y.contiguous(), x, weight, ctx.eps, need_weight,
                                                                 need_bias)
        return (grad_x if need_x else None, grad_weight if need_weight else None, grad_bias if need_bias else None,
                None)

    torch.library.register_autograd(f"{namespace}::layer_norm", _backward, setup_context=_setup_context)
