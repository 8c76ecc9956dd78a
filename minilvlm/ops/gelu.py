"""gelu: the GELU activations of the MLPs, in three forms.

    gelu(x, approximate="none") -> y

  "none"   x * Phi(x), Phi the normal CDF (the exact erf form; F.gelu's default, LLaVA's projector)
  "tanh"   x/2 * (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))  (Phi's gelu_new, SigLIP's gelu_pytorch_tanh)
  "quick"  x * sigmoid(1.702 x)                             (CLIP's quick_gelu)
Any shape; computed in float32 (float64 for float64) and rounded once. The gradient flows to x, and
only x is saved for the backward.

Native ops (schemas in csrc/common/schemas.h; kernels csrc/cpu/gelu.cpp, csrc/cuda/gelu.cu), for
float32, bfloat16 and float16 (float64 runs the reference):
  minilvlm::gelu(x, approximate) -> y
  minilvlm::gelu_backward(grad, x, approximate) -> grad_x

Under torch.autocast the op takes what autocast hands it and does not recast.
"""
import torch
import torch.nn.functional as F

from minilvlm.ops._registry import use_native
from minilvlm.ops._rowwise import NATIVE_DTYPES, check_floating, check_same_device, check_same_shape

APPROXIMATIONS = ("none", "tanh", "quick")


def _check(x, approximate, op="gelu"):
    check_floating(op, x=x)
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"{op}: approximate must be 'none', 'tanh' or 'quick', got {approximate!r}")


def gelu_reference(x, approximate="none"):
    """The specification, in plain PyTorch (any float dtype)."""
    _check(x, approximate)
    if approximate == "quick":
        return x * torch.sigmoid(1.702 * x)
    return F.gelu(x, approximate=approximate)


def gelu(x, approximate="none"):
    """GELU in the form `approximate`; the native kernel where one serves this device and dtype."""
    _check(x, approximate)
    if x.dtype in NATIVE_DTYPES and use_native(x.device):
        return torch.ops.minilvlm.gelu(x, approximate)
    return gelu_reference(x, approximate)


def register_gelu(namespace="minilvlm"):
    """Fakes for `namespace`::gelu(_backward) and autograd for gelu through the native backward.

    minilvlm.ops registers them for minilvlm; tests register them for minilvlm_emu (the emulated CUDA kernels).
    """
    lib = getattr(torch.ops, namespace)

    @torch.library.register_fake(f"{namespace}::gelu")
    def _fake(x, approximate):
        _check(x, approximate)
        return x.new_empty(x.shape)

    @torch.library.register_fake(f"{namespace}::gelu_backward")
    def _fake_backward(grad, x, approximate):
        op = "gelu_backward"
        _check(x, approximate, op)
        check_same_shape(op, "x", x=x, grad=grad)
        check_same_device(op, "x", x=x, grad=grad)
        return x.new_empty(x.shape)

    def _setup_context(ctx, inputs, output):
        x, approximate = inputs
        ctx.save_for_backward(x)
        ctx.approximate = approximate

    def _backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return lib.gelu_backward(grad.contiguous(), x, ctx.approximate), None

    torch.library.register_autograd(f"{namespace}::gelu", _backward, setup_context=_setup_context)
