"""mm_adapter: LaVIN's Mixture-of-Modality Adapter.

    mm_adapter(x, t, router_w, router_b, down_w, down_b, up_w, up_b, *, temperature, scale, groups) -> out

For each sample b with modality token t_b and each token x of that sample:
    w   = softmax((router_w t_b + router_b) / temperature)      routing weights over P paths
    h   = down_w x + down_b                                       shared down-projection, D -> r
    out = x + scale * sum_i w_i (U_i h + c_i)                     U_i = up_w[i], c_i = up_b[i]
U_i is grouped like LaVIN's `Conv1d(r, D, 1, groups)`: output channel d belongs to group
g = d // (D / groups) and reads h[g*r/groups : (g+1)*r/groups]; so up_w is [P, D, r/groups].

Arguments: x [B,T,D]; t [B,E] (E is usually D); router_w [P,E]; router_b [P]; down_w [r,D];
down_b [r]; up_w [P,D,r/groups]; up_b [P,D]. With t, router_w and router_b all None there is no
router and P must be 1 (w_0 = 1): that is RepAdapter.

Native ops (schemas in csrc/common/schemas.h; kernels csrc/cpu/mm_adapter.cpp and
csrc/cuda/mm_adapter.cu):
  minilvlm::mm_adapter(x, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature, scale,
                       groups) -> out
  minilvlm::mm_adapter_backward(grad_out, <the same arguments>) -> the gradients of x, t, router_w,
                       router_b, down_w, down_b, up_w, up_b
Without a router the public function passes t [B, 0], router_w [1, 0] and router_b [1]. The kernels
fold the router into one effective up-projection per sample (s * sum_i w_i U_i, only D x r/groups),
then read x once and write out once per token. Dropout on h is not part of the op:
models/adapters.py falls back to this file's reference with dropout when it is active. The CUDA
kernels take float32, bfloat16 and float16 x; the CPU kernels also float64. Parameters are float32 or
x's dtype; the kernels compute in float32 (float64 for float64 x) and round once into x's dtype.
"""
import torch
import torch.nn.functional as F

from minilvlm.ops._registry import autocast_off, check_same_device, use_native

_CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
# meta tensors take the native op's fake kernel, whatever kernel would serve them on a real device
_NATIVE_DTYPES = {"cpu": _CPU_DTYPES, "meta": _CPU_DTYPES, "cuda": (torch.float32, torch.bfloat16, torch.float16)}


def routing_weights(t, router_w, router_b, temperature):
    """softmax((router_w t + router_b) / temperature) per sample: [B, P]."""
    return torch.softmax((t @ router_w.t() + router_b) / temperature, dim=-1)


def _check_router(t, router_w, router_b, up_w):
    absent = [name for name, v in (("t", t), ("router_w", router_w), ("router_b", router_b)) if v is None]
    if absent and len(absent) != 3:
        raise ValueError(f"mm_adapter: give all of t, router_w, router_b or none of them; missing {absent}")
    if absent and up_w.shape[0] != 1:
        raise ValueError(f"mm_adapter: without a router there must be one path, but up_w has {up_w.shape[0]} "
                         f"(shape {tuple(up_w.shape)}); pass t, router_w and router_b")


def mm_adapter_reference(x, t, router_w, router_b, down_w, down_b, up_w, up_b, *, temperature, scale, groups,
                         dropout=0.0):
    """The specification, written from LaVIN's equations in plain PyTorch (any float dtype).

    dropout > 0 applies training-mode dropout to h, as LaVIN does during training.
    """
    _check_router(t, router_w, router_b, up_w)
    B, T, D = x.shape
    P, _, rg = up_w.shape
    h = x @ down_w.t() + down_b                                        # [B, T, r]
    if dropout > 0:
        h = F.dropout(h, p=dropout, training=True)
    hg = h.view(B, T, groups, rg)
    Ug = up_w.view(P, groups, D // groups, rg)
    paths = torch.einsum("btgk,pgdk->btpgd", hg, Ug).reshape(B, T, P, D) + up_b
    if router_w is None:
        mixed = paths[:, :, 0]
    else:
        w = routing_weights(t, router_w, router_b, temperature)     # [B, P]
        mixed = torch.einsum("bp,btpd->btd", w, paths)
    return x + scale * mixed


def mm_adapter(x, t, router_w, router_b, down_w, down_b, up_w, up_b, *, temperature, scale, groups):
    """The MM-Adapter forward (differentiable); the native kernels where they serve this device and dtype."""
    _check_router(t, router_w, router_b, up_w)
    if x.dtype in _NATIVE_DTYPES.get(x.device.type, ()) and use_native(x.device):
        if router_w is None:  # RepAdapter: an empty router gives w_0 = softmax of one logit = 1
            t = x.new_zeros(x.shape[0], 0)
            router_w, router_b = x.new_zeros(1, 0), x.new_zeros(1)
        # The kernels take bf16 tokens beside fp32 weights themselves; autocast left on would recast
        # the ATen matmuls inside them and break their dtype contract.
        with autocast_off(x.device):
            return torch.ops.minilvlm.mm_adapter(x, t, router_w, router_b, down_w, down_b, up_w, up_b,
                                                 float(temperature), float(scale), int(groups))
    return mm_adapter_reference(x, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature=temperature,
                                scale=scale, groups=groups)


def register_mm_adapter(namespace="minilvlm"):
    """Fakes for `namespace`::mm_adapter(_backward) and autograd for mm_adapter through the native backward.

    minilvlm.ops registers them for minilvlm; tests register them for minilvlm_emu (the emulated CUDA kernels).
    """
    lib = getattr(torch.ops, namespace)

    @torch.library.register_fake(f"{namespace}::mm_adapter")
    def _fake(x, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature, scale, groups):
        check_same_device("mm_adapter", "x", x, t=t, router_w=router_w, router_b=router_b, down_w=down_w,
                          down_b=down_b, up_w=up_w, up_b=up_b)
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake(f"{namespace}::mm_adapter_backward")
    def _fake_backward(grad_out, x, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature, scale, groups):
        check_same_device("mm_adapter_backward", "x", x, grad_out=grad_out, t=t, router_w=router_w, router_b=router_b,
                          down_w=down_w, down_b=down_b, up_w=up_w, up_b=up_b)
        return tuple(torch.empty_like(v, memory_format=torch.contiguous_format)
                     for v in (x, t, router_w, router_b, down_w, down_b, up_w, up_b))

    def _setup_context(ctx, inputs, output):
        *tensors, temperature, scale, groups = inputs
        ctx.save_for_backward(*tensors)
        ctx.hyper = (temperature, scale, groups)

    def _backward(ctx, grad_out):
        with autocast_off(grad_out.device):   # as in the forward
            grads = lib.mm_adapter_backward(grad_out.contiguous(), *ctx.saved_tensors, *ctx.hyper)
        return (*grads, None, None, None)

    torch.library.register_autograd(f"{namespace}::mm_adapter", _backward, setup_context=_setup_context)
