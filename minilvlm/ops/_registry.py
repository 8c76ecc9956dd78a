"""Which backend runs the ops: the native kernels of minilvlm._C, or the plain-PyTorch references.

MINILVLM_BACKEND=reference forces the references everywhere (debugging, speed baseline).
If minilvlm._C cannot be imported, this module warns once and the references run.

Per device (use_native): the CPU kernels always serve CPU tensors; meta tensors go to the native ops
too, whose registered fake kernels give the shapes (a dry run exercises the same registrations a
GPU run does); CUDA tensors go to the CUDA kernels when they were built and carry an image for the
device's compute capability (SASS of the same major version and a minor version no newer, or PTX
no newer than the device). Otherwise the op warns once and runs its reference. With no CUDA device
present only fake CUDA tensors exist, and they take the native ops' fake kernels.
MINILVLM_ASSUME_CUDA_CAPABILITY=M.m makes the check take that capability for every CUDA device
(tests force the fallback with it; reset_kernel_image_checks() forgets earlier answers).
"""
import contextlib
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
_image_for_device = {}  # CUDA device index -> whether the kernels have an image for it
_warned_capabilities = set()  # one warning per capability without an image, however many devices


def use_native(device):
    """Whether the native kernel serves tensors on `device`: CPU always, meta (the fake kernels)
    always, CUDA when the CUDA kernels were built with an image for the device."""
    if backend() != "native":
        return False
    if device.type in ("cpu", "meta"):
        return True
    if device.type == "cuda":
        index = device.index or 0
        ok = _image_for_device.get(index)
        if ok is None:
            ok = _image_for_device[index] = _cuda_kernels_serve(index)
        return ok
    return False


def autocast_off(device):
    """A context with autocast disabled on `device` (nothing to disable on meta and other devices,
    which torch.autocast does not take). The native ops call the kernels under it: the kernels own
    their dtype contract, and autocast would recast the ATen matmuls inside them."""
    if device.type in ("cpu", "cuda"):
        import torch
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def check_same_device(op, anchor_name, anchor, **tensors):
    """The kernels' device check, for the fake kernels (meta and FakeTensorMode runs), in the kernels'
    words: every tensor given (None skipped) must be on anchor's device."""
    for name, t in tensors.items():
        if t is not None and t.device != anchor.device:
            raise RuntimeError(f"{op}: {name} is on {t.device} but {anchor_name} is on {anchor.device}")


def parse_arch_list(arch_list):
    """[(major, minor, kind), ...] from a TORCH_CUDA_ARCH_LIST string ("8.0;9.0a;12.0+PTX"): kind is
    "sass", "sass-exact" (an arch-specific "a" image runs on that capability only) or "ptx"."""
    images = []
    for entry in filter(None, (e.strip() for e in arch_list.split(";"))):
        version = entry.removesuffix("+PTX")
        exact = version.endswith("a")
        major, minor = (int(x) for x in version.rstrip("a").split("."))
        images.append((major, minor, "sass-exact" if exact else "sass"))
        if entry.endswith("+PTX") and not exact:
            images.append((major, minor, "ptx"))
    return images


def has_kernel_image(arch_list, capability):
    """Whether kernels built for `arch_list` can run on a device of compute capability (major,
    minor): a SASS image runs on its major version at the same or a later minor version; PTX is
    compiled by the driver for any capability at least its own."""
    major, minor = capability
    for image_major, image_minor, kind in parse_arch_list(arch_list):
        if kind == "sass" and image_major == major and image_minor <= minor:
            return True
        if kind == "sass-exact" and (image_major, image_minor) == (major, minor):
            return True
        if kind == "ptx" and (image_major, image_minor) <= (major, minor):
            return True
    return False


def reset_kernel_image_checks():
    """Forget which CUDA devices the kernels serve (the next op on each checks, and may warn, again)."""
    _image_for_device.clear()
    _warned_capabilities.clear()


def _cuda_kernels_serve(index):
    """The check behind use_native(cuda:index), made once per device; warns when the answer is no."""
    import torch
    global _cuda_built
    if _cuda_built is None:
        _cuda_built = bool(torch.ops.minilvlm.built_with_cuda())
        if not _cuda_built:
            warnings.warn("minilvlm: this build has no CUDA kernels (built without nvcc or with "
                          "MINILVLM_CUDA=0); CUDA tensors use the reference ops", RuntimeWarning, stacklevel=4)
    if not _cuda_built:
        return False
    capability = _assumed_capability()
    if capability is None:
        if not torch.cuda.is_available():
            return True  # fake CUDA tensors (FakeTensorMode): nothing launches, the fake kernels run
        capability = torch.cuda.get_device_capability(index)
    archs = torch.ops.minilvlm.cuda_archs()
    if has_kernel_image(archs, capability):
        return True
    if capability in _warned_capabilities:
        return False
    _warned_capabilities.add(capability)
    warnings.warn(f"minilvlm: the CUDA kernels were built for {archs!r} (TORCH_CUDA_ARCH_LIST), which has no "
                  f"image for cuda:{index} (compute capability {capability[0]}.{capability[1]}); its ops run "
                  f"the plain-PyTorch references instead. To run the kernels there, rebuild with "
                  f"TORCH_CUDA_ARCH_LIST=\"{capability[0]}.{capability[1]}\" added.", RuntimeWarning, stacklevel=4)
    return False


def _assumed_capability():
    """MINILVLM_ASSUME_CUDA_CAPABILITY as (major, minor), or None when unset."""
    assumed = os.environ.get("MINILVLM_ASSUME_CUDA_CAPABILITY", "").strip()
    if not assumed:
        return None
    parts = assumed.split(".")
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        raise ValueError(f"MINILVLM_ASSUME_CUDA_CAPABILITY={assumed!r}: expected major.minor, e.g. 8.6")
    return int(parts[0]), int(parts[1])


def cuda_archs():
    """The TORCH_CUDA_ARCH_LIST the CUDA kernels were built for ("" without them or without _C)."""
    if _load_error is not None:
        return ""
    import torch
    return torch.ops.minilvlm.cuda_archs()


def cpu_capability():
    """The SIMD path of the CPU kernels: "avx512_bf16", "avx512", "avx2" or "default" (None without the
    extension); MINILVLM_CPU_CAPABILITY caps it."""
    if _load_error is not None:
        return None
    import torch
    return torch.ops.minilvlm.cpu_capability()
