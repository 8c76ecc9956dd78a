"""Which backend runs the ops: the native kernels of minilvlm._C, or the plain-PyTorch references.

MINILVLM_BACKEND=reference forces the references everywhere (debugging, speed baseline).
If minilvlm._C cannot be imported, this module warns once and the references run.
"""
import os
import warnings

_VALID = ("native", "reference")
_requested = os.environ.get("MINILVLM_BACKEND", "").strip().lower() or None
if _requested is not None and _requested not in _VALID:
    raise ValueError(f"MINILVLM_BACKEND={os.environ['MINILVLM_BACKEND']!r}: expected one of {_VALID}")

try:
    import torch  # noqa: F401  (the extension links against torch's libraries)

    from minilvlm import _C  # noqa: F401  (importing it registers torch.ops.minilvlm.*)
    _load_error = None
except ImportError as exc:  # the extension was not built, or was built for another torch
    _load_error = exc

if _load_error is not None:
    if _requested == "native":
        raise ImportError(f"MINILVLM_BACKEND=native but minilvlm._C failed to import: {_load_error}")
    if _requested is None:
        warnings.warn(f"minilvlm: native kernels unavailable ({_load_error}); using the plain-PyTorch "
                      "reference ops. Build them with `pip install --no-build-isolation -e .`.",
                      RuntimeWarning, stacklevel=2)


def native_available():
    """True when minilvlm._C imported."""
    return _load_error is None


def backend():
    """"native" when the compiled kernels run, "reference" when the plain-PyTorch references do."""
    return "native" if _load_error is None and _requested != "reference" else "reference"


_cuda_built = None


def use_native(device):
    """Whether the native kernel serves tensors on `device` (CPU always; CUDA if compiled in)."""
    if backend() != "native":
        return False
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        global _cuda_built
        if _cuda_built is None:
            import torch
            _cuda_built = bool(torch.ops.minilvlm.built_with_cuda())
            if not _cuda_built:
                warnings.warn("minilvlm: this build has no CUDA kernels (built without nvcc or with "
                              "MINILVLM_CUDA=0); CUDA tensors use the reference ops", RuntimeWarning, stacklevel=3)
        return _cuda_built
    return False


def cpu_capability():
    """The SIMD path of the CPU kernels: "avx512_bf16", "avx512", "avx2" or "default" (None without the
    extension); MINILVLM_CPU_CAPABILITY caps it."""
    if _load_error is not None:
        return None
    import torch
    return torch.ops.minilvlm.cpu_capability()
