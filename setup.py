"""Build minilvlm's native extensions.

minilvlm._C    CPU kernels always; CUDA kernels when nvcc and a CUDA build of torch exist.
minilvlm._emu  the CUDA kernels compiled with g++ against the SIMT emulator (tests only).

Knobs (environment variables):
  MINILVLM_CUDA=0|1      force the CUDA kernels off / on (default: auto)
  MINILVLM_EMU=0|1       force the emulator module off / on (default: when CUDA headers exist)
  MINILVLM_EMU_SANITIZE=address   build the emulator module with AddressSanitizer instead of the
                         access instrumentation of racecheck/memcheck (run it with libasan preloaded)
  TORCH_CUDA_ARCH_LIST   default "8.0;9.0;10.0;12.0+PTX" (csrc/build_support.py), less what the
                         installed nvcc cannot build; an explicit list is used as given
  MAX_JOBS               parallel compile jobs (ninja)
  DEBUG=1                -O0 -g
The CUDA decision reads nvcc and torch.version.cuda, never torch.cuda.is_available():
a build machine without a GPU must still produce the CUDA kernels.
"""
import os
import runpy
import shutil
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
_build_support = runpy.run_path(str(ROOT / "csrc" / "build_support.py"))
find_cuda_home, read_sources = _build_support["find_cuda_home"], _build_support["read_sources"]
# Generated headers (the CUDA arch list of csrc/registration.cpp) live with the build, not in csrc/.
GENERATED = ROOT / "build" / "generated"
emu_flags = _build_support["emu_flags"]

CUDA_HOME = find_cuda_home()
if CUDA_HOME:
    # torch.utils.cpp_extension resolves CUDA_HOME when it is imported, and takes
    # dirname(dirname(nvcc)), which is wrong when nvcc on PATH is a wrapper script.
    os.environ["CUDA_HOME"] = CUDA_HOME

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def env_flag(name):
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    if value not in ("0", "1"):
        raise SystemExit(f"{name} must be 0 or 1, got {value!r}")
    return value == "1"


def want_cuda():
    forced = env_flag("MINILVLM_CUDA")
    have = CUDA_HOME is not None and torch.version.cuda is not None
    if forced is True and not have:
        why = "nvcc was not found" if CUDA_HOME is None else f"torch {torch.__version__} is a CPU-only build"
        raise SystemExit(f"MINILVLM_CUDA=1 but {why}; set CUDA_HOME or install a CUDA build of torch")
    if forced is False:
        return False
    return have


def cuda_arch_list():
    """Set TORCH_CUDA_ARCH_LIST (the default, trimmed to this nvcc, unless given) and write the header
    that compiles it into _C; returns the list as torch will pass it to nvcc."""
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        arch_list, note = _build_support["default_cuda_arch_list"](CUDA_HOME)
        if note:
            print(f"minilvlm: {note}")
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    # What torch makes of the list (it also expands names such as "Hopper") is what the binary holds.
    try:
        from torch.utils.cpp_extension import _get_cuda_arch_flags
        built = _build_support["arch_list_from_gencode"](_get_cuda_arch_flags())
    except ImportError:  # a torch without that helper: record the list as given
        built = os.environ["TORCH_CUDA_ARCH_LIST"]
    _build_support["write_cuda_arch_header"](GENERATED, built)
    return built


def want_emu():
    forced = env_flag("MINILVLM_EMU")
    have = CUDA_HOME is not None and (Path(CUDA_HOME) / "include" / "cuda_bf16.h").exists()
    if forced is True and not have:
        raise SystemExit("MINILVLM_EMU=1 but CUDA headers (cuda_bf16.h) were not found; set CUDA_HOME")
    return have if forced is None else forced


debug = env_flag("DEBUG") is True
opt = ["-O0", "-g"] if debug else ["-O3"]
cxx_flags = opt + ["-std=c++20", "-fopenmp", "-fno-math-errno", "-ffp-contract=off", "-Wall",
             "-Wno-unknown-pragmas"]
nvcc_flags = opt + ["-std=c++20", "--expt-relaxed-constexpr", "-Xcompiler", "-fno-math-errno"]
include_dirs = [str(ROOT / "csrc")]

extensions = []
cpu_sources = read_sources(ROOT, "cpu")
if want_cuda():
    archs = cuda_arch_list()
    print(f"minilvlm: building CPU and CUDA kernels (CUDA_HOME={CUDA_HOME}, arch list {archs})")
    extensions.append(CUDAExtension(
        "minilvlm._C", cpu_sources + read_sources(ROOT, "cuda"),
        include_dirs=include_dirs + [str(GENERATED)],
        define_macros=[("MINILVLM_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=["-fopenmp"]))
else:
    print("minilvlm: building CPU kernels only")
    extensions.append(CppExtension(
        "minilvlm._C", cpu_sources, include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"]))

if want_emu():
    sanitize = os.environ.get("MINILVLM_EMU_SANITIZE") or None
    emu = CppExtension(
        "minilvlm._emu", read_sources(ROOT, "emu"),
        include_dirs=include_dirs + [str(Path(CUDA_HOME) / "include")],
        define_macros=[("MINILVLM_EMU", "1")],
        extra_compile_args={"cxx": emu_flags("kernel", sanitize, debug)},
        extra_link_args=emu_flags("link", sanitize))
    # The runtime's sources take other flags (no access instrumentation): EmuBuild compiles them.
    emu.runtime_sources = read_sources(ROOT, "emurt")
    # setuptools relinks only when a listed file is newer than the module; ninja then recompiles
    # what changed.
    emu.depends = emu.runtime_sources + sorted(
        str(p.relative_to(ROOT)) for d in ("csrc", "tests/emu") for ext in ("h", "cuh")
        for p in (ROOT / d).rglob(f"*.{ext}"))
    emu.runtime_flags = (emu_flags("kernel", sanitize, debug), emu_flags("runtime", sanitize, debug))
    extensions.append(emu)
    print("minilvlm: building the emulator module minilvlm._emu"
          + (f" with -fsanitize={sanitize}" if sanitize else " (access checks compiled in)"))
else:
    why = "MINILVLM_EMU=0" if env_flag("MINILVLM_EMU") is False else "no CUDA headers"
    print(f"minilvlm: skipping the emulator module minilvlm._emu ({why})")

class EmuBuild(BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)):
    """BuildExtension that compiles an extension's runtime_sources with their own flags (the emulator's
    runtime must not carry the kernels' access instrumentation) and links them in."""

    def build_extension(self, ext):
        runtime = getattr(ext, "runtime_sources", None)
        if runtime:
            kernel_flags, runtime_flags = ext.runtime_flags
            # BuildExtension has added its defines (TORCH_EXTENSION_NAME, ABI) to the kernel flags.
            added = [f for f in ext.extra_compile_args["cxx"] if f not in kernel_flags]
            objects = self.compiler.compile(
                runtime, output_dir=self.build_temp, macros=ext.define_macros, include_dirs=ext.include_dirs,
                debug=self.debug, extra_postargs={"cxx": runtime_flags + added}, depends=ext.depends)
            ext.extra_objects = list(ext.extra_objects or []) + objects
        super().build_extension(ext)


setup(
    name="minilvlm",
    version="0.1.0",
    packages=find_packages(include=["minilvlm", "minilvlm.*"]),
    ext_modules=extensions,
    cmdclass={"build_ext": EmuBuild},
    python_requires=">=3.10",
)
