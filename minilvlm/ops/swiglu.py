"""swiglu: silu(gate) * up, the activation of the LLaMA/Qwen2 MLP.

    swiglu(gate, up) -> y = gate * sigmoid(gate) * up

gate and up have one shape [...]; they are cast to one dtype first, their promotion. Computed in
float32 (float64 for float64) and rounded once. Gradients flow to gate and up; the backward
recomputes sigmoid(gate) from the saved gate instead of storing silu(gate), which costs less than
writing and re-reading it. A model calls `swiglu(gate_proj(h), up_proj(h))`.

Native ops (schemas in csrc/common/schemas.h; kernels csrc/cpu/swiglu.cpp, csrc/cuda/swiglu.cu), for
float32, bfloat16 and float16 (float64 runs the reference):
  minilvlm::swiglu(gate, up) -> y
  minilvlm::swiglu_backward(grad, gate, up) -> (grad_gate, grad_up)

Under torch.autocast the op takes what autocast hands it (the bf16/fp16 outputs of the two
projections) and does not recast.
"""
import torch
import torch.nn.functional as F

from minilvlm.ops._registry import use_native
from minilvlm.ops._rowwise import NATIVE_DTYPES, check_floating, check_same_device, check_same_shape, to_common_dtype


def _check(gate, up, op="swiglu"):
    check_floating(op, gate=gate, up=up)
    check_same_shape(op, "gate", gate=gate, up=up)
    check_same_device(op, "gate", gate=gate, up=up)


def swiglu_reference(gate, up):
    """The specification, in plain PyTorch (any float dtype)."""
    return F.silu(gate) * up


def swiglu(gate, up):
    """silu(gate) * up; the native kernel where one serves this device and dtype."""
    _check(gate, up)
    gate, up = to_common_dtype(gate, up)
    if gate.dtype in NATIVE_DTYPES and use_native(gate.device):
        return torch.ops.minilvlm.swiglu(gate, up)
    return swiglu_reference(gate, up)


def register_swiglu(namespace="minilvlm"):
    """Fakes for `namespace`::swiglu(_backward) and autograd for swiglu through the native backward.

    minilvlm.ops registers them for minilvlm; tests register them for minilvlm_emu (the emulated CUDA kernels).
    """
    lib = getattr(torch.ops, namespace)

    @torch.library.register_fake(f"{namespace}::swiglu")
    def _fake(gate, up):
        _check(gate, up)
        return gate.new_empty(gate.shape)

    @torch.library.register_fake(f"{namespace}::swiglu_backward")
    def _fake_backward(grad, gate, up):
        op = "swiglu_backward"
        check_same_shape(op, "gate", gate=gate, up=up, grad=grad)
        check_same_device(op, "gate", gate=gate, up=up, grad=grad)
        return gate.new_empty(gate.shape), gate.new_empty(gate.shape)

    def _setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _backward(ctx, grad):
        grad_gate, grad_up = lib.swiglu_backward(grad.contiguous(), *ctx.saved_tensors)
        return grad_gate if ctx.needs_input_grad[0] else None, grad_up if ctx.needs_input_grad[1] else None

    torch.library.register_autograd(f"{namespace}::swiglu", _backward, setup_context=_setup_context)
