"""rope: rotary position embeddings, applied to q and k in place.

    rope_(q, k, cos, sin) -> (q, k)
    rope_heads_(x, cos, sin, head_dim) -> x    x [B, T, H * head_dim]: a projection's output, rotated
                                               where it lies (see the function)
    rope_tables(position_ids, rotary_dim, theta, dtype=torch.float32) -> (cos, sin)

  q         [B, H, T, head_dim], float32, bfloat16 or float16 (float64 through the reference); any
            strides with contiguous channels, so the decoder's q, a transposed view of its
            projection, is rotated where it lies
  k         [B, H_kv, T, head_dim] like q, or None
  cos, sin  [B or 1, T, rotary_dim / 2], float32 (float64 beside float64 q): rope_tables, computed
            once per forward from integer position_ids [B, T] (left-padded and packed batches pass
            their own) and shared by every layer

The channel pairs (i, i + rotary_dim/2), i < rotary_dim/2, the "rotate half" layout of Hugging Face
checkpoints, become (x1 cos - x2 sin, x2 cos + x1 sin), computed in fp32 and written back in q's
dtype; channels from rotary_dim on pass through (Phi-2 rotates 40% of each head). The angles are
position * theta^(-2i/rotary_dim) in fp32, as transformers computes them; rotary_dim must be even.

In place and autograd: the rotation is orthogonal, so the gradient is the incoming gradient
rotated by -angle (rope_backward, a new tensor); only the tables are saved, never q or k. Each
rotated tensor is marked dirty, which moves its version counter: anything that saved q or k before
the rotation fails loudly in backward instead of using rotated values. A leaf that requires grad
cannot be rotated in place (torch's error). With autograd recording, q and k are rotated by one
call each (an autograd.Function may mark only one view dirty); without it, by one fused call.

Native ops (schemas in csrc/common/schemas.h; kernels csrc/cpu/rope.cpp and csrc/cuda/rope.cu):
  minilvlm::rope_(Tensor(a!) q, Tensor(b!)? k, cos, sin) -> ()
  minilvlm::rope_backward(grad, cos, sin) -> grad rotated by -angle, with grad's strides (contiguous
                          when grad is expanded)
register_rope puts the autograd of rope_ on the Autograd dispatch key (torch.library.register_autograd
takes only functional ops) and the fakes of both ops.
"""
import torch

from minilvlm.ops._registry import use_native

_NATIVE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Library objects that hold the Autograd-key kernels registered by register_rope, per namespace.
_AUTOGRAD_LIBRARIES = {}


def _same_device(q, tensors):
    """The kernels' device check, raised before dispatch and by the fakes with the same wording."""
    for name, t in tensors:
        if t is not None and t.device != q.device:
            raise RuntimeError(f"rope_: {name} is on {t.device} but q is on {q.device} (one device for all)")


def _check(q, k, cos, sin):
    """The native op's checks, raised before dispatch with the same wording (ValueError/TypeError)."""
    for name, x in (("q", q), ("k", k)):
        if x is None:
            continue
        if x.dim() != 4:
            raise ValueError(f"rope_: {name} must be 4-D [B, H, T, head_dim], got shape {list(x.shape)}")
        if not x.dtype.is_floating_point:
            raise TypeError(f"rope_: {name} must be a float tensor, got {x.dtype}")
    if k is not None and (k.shape[0], k.shape[2], k.shape[3]) != (q.shape[0], q.shape[2], q.shape[3]):
        raise ValueError(f"rope_: k must be [{q.shape[0]}, H_kv, {q.shape[2]}, {q.shape[3]}] like q of shape "
                         f"{list(q.shape)}, got {list(k.shape)}")
    if k is not None and k.dtype != q.dtype:
        raise TypeError(f"rope_: k is {k.dtype} but q is {q.dtype}")
    for name, t in (("cos", cos), ("sin", sin)):
        if t.dim() != 3 or t.shape[0] not in (1, q.shape[0]) or t.shape[1] != q.shape[2]:
            raise ValueError(f"rope_: {name} must be [{q.shape[0]} or 1, {q.shape[2]}, rotary_dim / 2] for q of "
                             f"shape {list(q.shape)}, got {list(t.shape)}")
    if cos.shape != sin.shape or cos.dtype != sin.dtype:
        raise ValueError(f"rope_: cos and sin must have the same shape and dtype, got {list(cos.shape)} "
                         f"{cos.dtype} and {list(sin.shape)} {sin.dtype}")
    if 2 * cos.shape[-1] > q.shape[-1]:
        raise ValueError(f"rope_: the tables rotate {2 * cos.shape[-1]} channels but q has head_dim {q.shape[-1]}")
    _same_device(q, (("k", k), ("cos", cos), ("sin", sin)))


def _dense(t):
    """Whether t's elements fill a span of its storage without overlap or gaps (then empty_like keeps
    its strides, as ATen's is_non_overlapping_and_dense says)."""
    expected = 1
    for stride, size in sorted((st, n) for st, n in zip(t.stride(), t.shape) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def rope_tables(position_ids, rotary_dim, theta, dtype=torch.float32):
    """(cos, sin) [B, T, rotary_dim / 2] for integer positions [B, T]: angles in fp32, tables in fp32,
    or fp64 when dtype is (gradcheck models)."""
    if rotary_dim < 0 or rotary_dim % 2:
        raise ValueError(f"rope: rotary_dim must be even and non-negative (pairs (i, i + rotary_dim/2)), "
                         f"got {rotary_dim}")
    if position_ids.dim() != 2 or position_ids.dtype.is_floating_point:
        raise ValueError(f"rope: position_ids must be integer [B, T], got {position_ids.dtype} "
                         f"{list(position_ids.shape)}")
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, device=position_ids.device).float() / rotary_dim))
    angles = position_ids.float()[..., None] * inv_freq
    table = torch.float64 if dtype == torch.float64 else torch.float32
    return angles.cos().to(table), angles.sin().to(table)


def rope_reference(x, cos, sin, inverse=False):
    """The specification, out of place: x [B, H, T, hd] rotated (by -angle when inverse), computed in
    promote_types(x.dtype, cos.dtype) and returned in x's dtype."""
    half = cos.shape[-1]
    acc = torch.promote_types(x.dtype, cos.dtype)
    c, s = cos[:, None].to(acc), sin[:, None].to(acc)
    s = -s if inverse else s
    x1, x2 = x[..., :half].to(acc), x[..., half:2 * half].to(acc)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s, x[..., 2 * half:].to(acc)), dim=-1).to(x.dtype)


class _RotateInPlace(torch.autograd.Function):
    """x rotated in place by rotate(x, cos, sin); the gradient is rotate_back(grad, cos, sin). Saves only
    the tables."""

    @staticmethod
    def forward(ctx, x, cos, sin, rotate, rotate_back):
        rotate(x, cos, sin)
        ctx.mark_dirty(x)
        ctx.save_for_backward(cos, sin)
        ctx.rotate_back = rotate_back
        return x

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return ctx.rotate_back(grad, cos, sin), None, None, None, None


def _reference_rotate(x, cos, sin):
    with torch.no_grad():
        x.copy_(rope_reference(x, cos, sin))


def _reference_rotate_back(grad, cos, sin):
    return rope_reference(grad, cos, sin, inverse=True)


def rope_(q, k, cos, sin):
    """Rotate q (and k, unless None) in place; returns (q, k). The native kernel where one serves this
    device and dtype, the reference otherwise."""
    _check(q, k, cos, sin)
    if use_native(q.device) and q.dtype in _NATIVE_DTYPES and cos.dtype == torch.float32:
        torch.ops.minilvlm.rope_(q, k, cos, sin)
        return q, k
    for x in (q, k):
        if x is not None:
            _RotateInPlace.apply(x, cos, sin, _reference_rotate, _reference_rotate_back)
    return q, k


def rope_heads_(x, cos, sin, head_dim):
    """Rotate x [B, T, H * head_dim] in place, each row's heads side by side as a q or k projection
    returns them; returns x. The same rotation as rope_ on the [B, H, T, head_dim] view of x, but
    under autograd the rotation is recorded on x itself: rotating that view in place would make
    autograd rebuild x's gradient through a copy of the whole projection in backward (CopySlices:
    a clone, a zero fill and two strided copies per call). x must not itself be a view; when it
    is, or nothing needs its gradient, this is rope_ on the view."""
    if x.dim() != 3 or head_dim <= 0 or x.shape[-1] % head_dim:
        raise ValueError(f"rope_heads_: x must be [B, T, H * head_dim] with head_dim = {head_dim}, got {list(x.shape)}")

    def heads(t):
        return t.view(t.shape[0], t.shape[1], -1, head_dim).transpose(1, 2)

    if x._is_view() or not (torch.is_grad_enabled() and x.requires_grad):
        rope_(heads(x), None, cos, sin)
        return x
    _check(heads(x), None, cos, sin)
    native = use_native(x.device) and x.dtype in _NATIVE_DTYPES and cos.dtype == torch.float32
    ops = torch.ops.minilvlm

    def rotate(t, c, s):
        if native:
            ops.rope_(heads(t), None, c, s)   # grad mode is off inside forward: the kernel alone runs
        else:
            _reference_rotate(heads(t), c, s)

    def rotate_back(grad, c, s):
        back = ops.rope_backward(heads(grad.contiguous()), c, s) if native else _reference_rotate_back(
            heads(grad.contiguous()), c, s)
        return back.transpose(1, 2).reshape(grad.shape)

    return _RotateInPlace.apply(x, cos, sin, rotate, rotate_back)


def register_rope(namespace="minilvlm"):
    """Fakes for `namespace`::rope_ and rope_backward, and the autograd of rope_ on the Autograd key.

    minilvlm.ops registers them for minilvlm; tests may register them for minilvlm_emu (the emulated CUDA kernels).
    """
    ops = getattr(torch.ops, namespace)

    @torch.library.register_fake(f"{namespace}::rope_")
    def _fake(q, k, cos, sin):
        _same_device(q, (("k", k), ("cos", cos), ("sin", sin)))
        return None

    @torch.library.register_fake(f"{namespace}::rope_backward")
    def _fake_backward(grad, cos, sin):
        _same_device(grad, (("cos", cos), ("sin", sin)))
        usable = grad.dim() == 4 and _dense(grad) and (grad.shape[-1] <= 1 or grad.stride(-1) == 1)
        return torch.empty_like(grad) if usable else grad.new_empty(grad.shape)

    def rotate(x, cos, sin):
        with torch._C._AutoDispatchBelowAutograd():  # the kernel itself, below this Autograd kernel
            ops.rope_(x, None, cos, sin)

    def rotate_back(grad, cos, sin):
        return ops.rope_backward(grad, cos, sin)

    def autograd_kernel(q, k, cos, sin):
        if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (q, k)):
            for x in (q, k):
                if x is not None:
                    _RotateInPlace.apply(x, cos, sin, rotate, rotate_back)
            return
        with torch._C._AutoDispatchBelowAutograd():
            ops.rope_(q, k, cos, sin)
        # The dispatcher moves the version counter of a custom op's mutated inputs only in its own
        # autograd fallback, which this kernel replaces (mark_dirty does it on the path above).
        for x in (q, k):
            if x is not None:
                torch.autograd.graph.increment_version(x)

    library = torch.library.Library(namespace, "IMPL")
    library.impl("rope_", autograd_kernel, "Autograd")
    _AUTOGRAD_LIBRARIES[namespace] = library
