"""mm_adapter: LaVIN's Mixture-of-Modality Adapter.

    mm_adapter(x, t, router_w, router_b, down_w, down_b, up_w, up_b, *, temperature, scale, groups,
               dropout=0.0, seed=None, offset=0) -> out

For each sample b with modality token t_b and each token x of that sample:
    w   = softmax((router_w t_b + router_b) / temperature)      routing weights over P paths
    h   = down_w x + down_b                                       shared down-projection, D -> r
    h   = h * keep / (1 - dropout)                                training-mode dropout, when dropout > 0
    out = x + scale * sum_i w_i (U_i h + c_i)                     U_i = up_w[i], c_i = up_b[i]
U_i is grouped like LaVIN's `Conv1d(r, D, 1, groups)`: output channel d belongs to group
g = d // (D / groups) and reads h[g*r/groups : (g+1)*r/groups]; so up_w is [P, D, r/groups].

Arguments: x [B,T,D]; t [B,E] (E is usually D); router_w [P,E]; router_b [P]; down_w [r,D];
down_b [r]; up_w [P,D,r/groups]; up_b [P,D]. With t, router_w and router_b all None there is no
router and P must be 1 (w_0 = 1): that is RepAdapter.

Native ops (schemas in csrc/common/schemas.h; kernels csrc/cpu/mm_adapter.cpp and
csrc/cuda/mm_adapter.cu):
  minilvlm::mm_adapter(x, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature, scale,
                       groups, dropout=0, seed=0, offset=0) -> out
  minilvlm::mm_adapter_backward(grad_out, <the same arguments>) -> the gradients of x, t, router_w,
                       router_b, down_w, down_b, up_w, up_b
Without a router the public function passes t [B, 0], router_w [1, 0] and router_b [1]. The kernels
fold the router into one effective up-projection per sample (s * sum_i w_i U_i, only D x r/groups),
then read x once and write out once per token. The dropout mask on h is counter-based: element i of
h (flattened [B,T,r]) is kept iff a Philox4x32-10 word of (seed, offset, i) lies below a threshold
(csrc/common/philox.h; dropout_keep_mask here is the same function in plain PyTorch), so every
backend and the reference make the same mask, and the backward regenerates it rather than storing
it. Without a seed the public function draws one from torch's default CPU generator, which the
trainer checkpoints: runs are reproducible from their seed and resume bitwise. The CUDA
kernels take float32, bfloat16 and float16 x; the CPU kernels also float64. Parameters are float32 or
x's dtype; the kernels compute in float32 (float64 for float64 x) and round once into x's dtype.
"""
import math

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensor

from minilvlm.ops._registry import autocast_off, check_same_device, use_native

_CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
# meta tensors take the native op's fake kernel, whatever kernel would serve them on a real device
_NATIVE_DTYPES = {"cpu": _CPU_DTYPES, "meta": _CPU_DTYPES, "cuda": (torch.float32, torch.bfloat16, torch.float16)}


_PHILOX_MUL = (0xD2511F53, 0xCD9E8D57)
_PHILOX_WEYL = (0x9E3779B9, 0xBB67AE85)
_U32 = 0xFFFFFFFF


def _mulhilo(c, multiplier):
    """(hi, lo) 32-bit words of c * multiplier for an int64 tensor c of 32-bit values, without overflowing
    int64: the multiplier is split in 16-bit halves."""
    low = c * (multiplier & 0xFFFF)
    high = c * (multiplier >> 16)
    t = low + ((high & 0xFFFF) << 16)
    return (high >> 16) + (t >> 32), t & _U32


def philox4x32_10(counter, key):
    """Philox4x32-10 of `counter` (four int64 tensors of 32-bit words) under `key` (two Python ints)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        hi0, lo0 = _mulhilo(c0, _PHILOX_MUL[0])
        hi1, lo1 = _mulhilo(c2, _PHILOX_MUL[1])
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _PHILOX_WEYL[0]) & _U32, (k1 + _PHILOX_WEYL[1]) & _U32
    return c0, c1, c2, c3


def dropout_keep_mask(seed, offset, shape, dropout, device="cpu"):
    """The keep mask (bool, `shape`) that the native kernels apply for (seed, offset): element i of the
    flattened tensor is kept iff (word i % 4 of Philox(counter=(i // 4, offset), key=seed)) >> 8 lies
    below round((1 - dropout) * 2^24)."""
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"mm_adapter: dropout must lie in [0, 1), got {dropout}")
    n = math.prod(shape)
    seed, offset = int(seed) & 0xFFFFFFFFFFFFFFFF, int(offset) & 0xFFFFFFFFFFFFFFFF
    block = torch.arange((n + 3) // 4, dtype=torch.int64, device=device)
    counter = (block & _U32, block >> 32, torch.full_like(block, offset & _U32), torch.full_like(block, offset >> 32))
    words = torch.stack(philox4x32_10(counter, (seed & _U32, seed >> 32)), dim=1).reshape(-1)[:n]
    return ((words >> 8) < int((1.0 - dropout) * 16777216.0 + 0.5)).reshape(shape)


def _without_data(x):
    return x.device.type == "meta" or isinstance(x, FakeTensor)


def draw_dropout_seed():
    """A seed for one dropout call from torch's default CPU generator (so torch.manual_seed and the
    trainer's checkpointed RNG state decide it)."""
    return int(torch.randint(-2 ** 63, 2 ** 63 - 1, (), dtype=torch.int64))


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
                         dropout=0.0, dropout_mask=None):
    """The specification, written from LaVIN's equations in plain PyTorch (any float dtype).

    dropout > 0 applies training-mode dropout to h, as LaVIN does during training: with dropout_mask
    (bool [B,T,r], e.g. from dropout_keep_mask) that mask, else F.dropout's own.
    """
    _check_router(t, router_w, router_b, up_w)
    B, T, D = x.shape
    P, _, rg = up_w.shape
    h = x @ down_w.t() + down_b                                        # [B, T, r]
    if dropout > 0 and dropout_mask is not None:
        h = h * dropout_mask.to(h.dtype) * (1.0 / (1.0 - dropout))
    elif dropout > 0:
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


def mm_adapter(x, t, router_w, router_b, down_w, down_b, up_w, up_b, *, temperature, scale, groups, dropout=0.0,
               seed=None, offset=0):
    """The MM-Adapter forward (differentiable); the native kernels where they serve this device and dtype.

    dropout > 0 drops entries of h with the counter-based mask of (seed, offset) (module docstring); seed
    None draws one (draw_dropout_seed)."""
    _check_router(t, router_w, router_b, up_w)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"mm_adapter: dropout must lie in [0, 1), got {dropout}")
    if dropout > 0 and seed is None:
        # Meta and fake tensors hold no data, so no mask to draw: no CPU tensor is made for them (what
        # tests/train/test_devices.py checks of a step on meta or fake CUDA tensors).
        seed = 0 if _without_data(x) else draw_dropout_seed()
    seed = 0 if seed is None else int(seed)
    if x.dtype in _NATIVE_DTYPES.get(x.device.type, ()) and use_native(x.device):
        if router_w is None:  # RepAdapter: an empty router gives w_0 = softmax of one logit = 1
            t = x.new_zeros(x.shape[0], 0)
            router_w, router_b = x.new_zeros(1, 0), x.new_zeros(1)
        # The kernels take bf16 tokens beside fp32 weights themselves; autocast left on would recast
        # the ATen matmuls inside them and break their dtype contract.
        with autocast_off(x.device):
            return torch.ops.minilvlm.mm_adapter(x, t, router_w, router_b, down_w, down_b, up_w, up_b,
                                                 float(temperature), float(scale), int(groups), float(dropout), seed,
                                                 int(offset))
    mask = None
    if dropout > 0:
        mask = dropout_keep_mask(seed, offset, (*x.shape[:2], down_w.shape[0]), dropout, x.device)
    # The reference computes in one dtype: fp32 parameters beside bf16 tokens are cast to x's dtype.
    cast = [None if v is None else v.to(x.dtype) for v in (t, router_w, router_b, down_w, down_b, up_w, up_b)]
    return mm_adapter_reference(x, *cast, temperature=temperature, scale=scale, groups=groups, dropout=dropout,
                                dropout_mask=mask)


def register_mm_adapter(namespace="minilvlm"):
    """Fakes for `namespace`::mm_adapter(_backward) and autograd for mm_adapter through the native backward.

    minilvlm.ops registers them for minilvlm; tests register them for minilvlm_emu (the emulated CUDA kernels).
    """
    lib = getattr(torch.ops, namespace)

    @torch.library.register_fake(f"{namespace}::mm_adapter")
    def _fake(x, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature, scale, groups, dropout=0.0, seed=0,
              offset=0):
        check_same_device("mm_adapter", "x", x, t=t, router_w=router_w, router_b=router_b, down_w=down_w,
                          down_b=down_b, up_w=up_w, up_b=up_b)
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake(f"{namespace}::mm_adapter_backward")
    def _fake_backward(grad_out, x, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature, scale, groups,
                       dropout=0.0, seed=0, offset=0):
        check_same_device("mm_adapter_backward", "x", x, grad_out=grad_out, t=t, router_w=router_w, router_b=router_b,
                          down_w=down_w, down_b=down_b, up_w=up_w, up_b=up_b)
        return tuple(torch.empty_like(v, memory_format=torch.contiguous_format)
                     for v in (x, t, router_w, router_b, down_w, down_b, up_w, up_b))

    def _setup_context(ctx, inputs, output):
        # The backward takes the forward's scalars, (seed, offset) among them: it regenerates the mask.
        ctx.save_for_backward(*inputs[:8])
        ctx.hyper = tuple(inputs[8:])

    def _backward(ctx, grad_out):
        with autocast_off(grad_out.device):   # as in the forward
            grads = lib.mm_adapter_backward(grad_out.contiguous(), *ctx.saved_tensors, *ctx.hyper)
        return (*grads, *(None for _ in ctx.hyper))

    torch.library.register_autograd(f"{namespace}::mm_adapter", _backward, setup_context=_setup_context)
