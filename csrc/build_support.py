"""Build helpers shared by setup.py, CMakeLists.txt and tools/cuda_check.py (no torch import here).

It lives in csrc/, beside the source list it reads, and is loaded by path
(runpy.run_path): csrc/ never goes on sys.path, where its folders cuda/ and common/ would pass
for namespace packages, and it is no package, so `pip install -e .` never installs it.

    python csrc/build_support.py cuda-home    # print the CUDA toolkit root (empty if none): for CMake
    python csrc/build_support.py emu-flags {kernel,runtime,link} [address]   # minilvlm._emu's flags, ;-separated
"""
import os
import re
import shutil
from pathlib import Path


def read_sources(root, kind):
    """Paths of one kind from csrc/sources.txt, the list CMakeLists.txt reads too."""
    paths = []
    for line in (Path(root) / "csrc" / "sources.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line_kind, path = line.split(maxsplit=1)
        if line_kind == kind:
            paths.append(path)
    return paths


# minilvlm._emu (docs/emulator.md, "Building"). Kernel sources ("emu" in sources.txt) get GCC's
# thread-sanitizer instrumentation without its runtime: each load, store and atomic calls a __tsan_*
# hook that the emulator defines (csrc/emu/access_hooks.cpp), which is how racecheck and memcheck see
# every access; -g1 keeps the line table that names the source line of a reported access. The
# runtime ("emurt") must not be instrumented. sanitize="address" builds everything with ASan
# instead (the two instrumentations exclude each other), for the CI step that runs the emulator
# tests under AddressSanitizer with libasan preloaded.
EMU_COMMON_FLAGS = ["-std=c++20", "-fopenmp", "-fno-math-errno", "-ffp-contract=off", "-Wall",
                    "-Wno-unknown-pragmas",  # the kernels' #pragma unroll is nvcc's
                    "-UNDEBUG"]              # device asserts stay live in tests
EMU_ACCESS_HOOK_FLAGS = ["-g1", "-fsanitize=thread", "--param=tsan-instrument-func-entry-exit=0"]
EMU_ASAN_FLAGS = ["-g1", "-fsanitize=address", "-fno-sanitize-address-use-after-scope", "-fno-omit-frame-pointer"]


def emu_flags(part, sanitize=None, debug=False):
    """Compiler flags of minilvlm._emu's kernel sources (part="kernel"), its runtime ("runtime"), or
    its link flags ("link"); sanitize is None or "address"."""
    if part not in ("kernel", "runtime", "link"):
        raise ValueError(f"emu_flags: part must be kernel, runtime or link, got {part!r}")
    if sanitize not in (None, "", "address"):
        raise ValueError(f"emu_flags: sanitize must be None or 'address', got {sanitize!r}")
    asan = EMU_ASAN_FLAGS if sanitize == "address" else []
    if part == "link":
        return ["-fopenmp"] + (["-fsanitize=address"] if asan else [])
    flags = (["-O0", "-g"] if debug else ["-O2"]) + EMU_COMMON_FLAGS + asan
    if part == "kernel" and not asan:
        flags += EMU_ACCESS_HOOK_FLAGS
    return flags


def _real_nvcc(path):
    """Follow symlinks and one-line `exec /real/nvcc "$@"` wrapper scripts to the real binary."""
    path = Path(os.path.realpath(path))
    for _ in range(4):
        try:
            head = path.read_bytes()[:4096]
        except OSError:
            return None
        if head.startswith(b"\x7fELF"):
            return path
        match = re.search(rb"exec\s+['\"]?(/[^\s'\"]+/nvcc)\b", head)
        if not match:
            return None
        path = Path(os.path.realpath(match.group(1).decode()))
    return None


def find_cuda_home():
    """The CUDA toolkit root: CUDA_HOME/CUDA_PATH, else the real nvcc on PATH, else /usr/local/cuda."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home:
            if not (Path(home) / "bin" / "nvcc").exists():
                raise SystemExit(f"{var}={home} has no bin/nvcc")
            return str(Path(home).resolve())
    candidates = []
    on_path = shutil.which("nvcc")
    if on_path:
        candidates.append(on_path)
    candidates.append("/usr/local/cuda/bin/nvcc")
    for candidate in candidates:
        if Path(candidate).exists():
            real = _real_nvcc(candidate)
            if real is not None:
                return str(real.parent.parent)
    return None


if __name__ == "__main__":
    import sys
    if sys.argv[1:] == ["cuda-home"]:
        print(find_cuda_home() or "")
    elif len(sys.argv) in (3, 4) and sys.argv[1] == "emu-flags":
        print(";".join(emu_flags(sys.argv[2], sys.argv[3] if len(sys.argv) == 4 else None)))
    else:
        sys.exit("usage: python csrc/build_support.py cuda-home | emu-flags {kernel,runtime,link} [address]")
