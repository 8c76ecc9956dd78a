"""Argument handling shared by the row and elementwise ops (rms_norm, layer_norm, swiglu, gelu):
the dtype the kernels take, one dtype for all of an op's tensors, and the checks that the public
functions and the fake kernels raise before dispatch, worded as the native kernels word them
(csrc/common/rows_host.h).
"""
import torch

NATIVE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_floating(op, **tensors):
    """TypeError unless every given tensor (None skipped) has a floating dtype."""
    for name, t in tensors.items():
        if t is not None and not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")


def check_same_device(op, first, **tensors):
    """RuntimeError, as the kernels raise it, when a tensor is not on the device of `first` (a name)."""
    ref = tensors[first]
    for name, t in tensors.items():
        if t is not None and t.device != ref.device:
            raise RuntimeError(f"{op}: {name} is on {t.device} but {first} is on {ref.device}")


def check_same_shape(op, first, **tensors):
    ref = tensors[first]
    for name, t in tensors.items():
        if t is not None and t.shape != ref.shape:
            raise ValueError(f"{op}: {name} must have the shape of {first} {list(ref.shape)}, got {list(t.shape)}")


def check_channel_params(op, x, **params):
    """ValueError unless each given per-channel parameter is [D], D = x's last dimension (at least 1)."""
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"{op}: x must have a last dimension of at least 1 to normalize, got shape {list(x.shape)}")
    for name, t in params.items():
        if t is not None and list(t.shape) != [x.shape[-1]]:
            raise ValueError(f"{op}: {name} must have shape [{x.shape[-1]}] (the last dimension of x, shape "
                             f"{list(x.shape)}), got {list(t.shape)}")


def check_eps(op, eps):
    if not eps >= 0:
        raise ValueError(f"{op}: eps must be >= 0, got {eps}")


def to_common_dtype(*tensors):
    """The tensors (None kept) cast to their promoted dtype: one dtype for the kernels, the dtype
    eager PyTorch would compute a mix in (a bf16 input beside an fp32 residual or weight gives fp32)."""
    dtype = None
    for t in tensors:
        if t is not None:
            dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    return tuple(None if t is None else t.to(dtype) for t in tensors)


def contiguous_empty(t, shape=None):
    """A contiguous tensor like t (dtype, device), of t's shape or the one given: what the kernels return."""
    return t.new_empty(t.shape if shape is None else shape)
