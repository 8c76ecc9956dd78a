"""Build helpers shared by setup.py, CMakeLists.txt and tools/cuda_check.py (no torch import here).

It lives in csrc/, beside the source list it reads, and is loaded by path
(runpy.run_path): csrc/ never goes on sys.path, where its folders cuda/ and common/ would pass
for namespace packages, and it is no package, so `pip install -e .` never installs it.

    python csrc/build_support.py cuda-home        # print the CUDA toolkit root (empty if none): for CMake
    python csrc/build_support.py cuda-arch-list   # the default TORCH_CUDA_ARCH_LIST for that nvcc
    python csrc/build_support.py emu-flags {kernel,runtime,link} [address]   # minilvlm._emu's flags, ;-separated
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

# Every GPU generation we can name: Ampere (A100; 8.6/8.9 cards run the 8.0 image), Hopper, Blackwell
# datacenter (B200; 10.3 runs the 10.0 image) and Blackwell consumer/workstation (RTX 50xx, 12.1 runs
# the 12.0 image), plus PTX of the newest, which the driver JIT-compiles for GPUs newer than all of them.
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0;10.0;12.0+PTX"


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


def _arch_digits(version):
    """"12.0" -> "120", "9.0a" -> "90a"."""
    return version.replace(".", "")


def _arch_key(version):
    major, minor = version.rstrip("af").split(".")
    return int(major), int(minor)


def nvcc_targets(nvcc):
    """({"sm_80", ...}, {"compute_80", ...}): what this nvcc can emit SASS and PTX for, or None when
    it cannot say (nvcc before CUDA 11 has no --list-gpu-code)."""
    found = []
    for flag in ("--list-gpu-code", "--list-gpu-arch"):
        try:
            proc = subprocess.run([nvcc, flag], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if proc.returncode != 0:
            return None
        found.append(set(proc.stdout.split()))
    return found[0], found[1]


def trim_cuda_arch_list(arch_list, sass, ptx):
    """(kept list, dropped versions): the entries of `arch_list` whose SASS nvcc can emit. If any
    entry asked for PTX, the PTX goes with the newest kept entry that nvcc has PTX for, so that a
    GPU newer than every image can still JIT the kernels."""
    entries = [e.strip() for e in arch_list.split(";") if e.strip()]
    want_ptx = any(e.endswith("+PTX") for e in entries)
    kept, dropped = [], []
    for entry in entries:
        version = entry.removesuffix("+PTX")
        (kept if f"sm_{_arch_digits(version)}" in sass else dropped).append(version)
    with_ptx = [v for v in kept if f"compute_{_arch_digits(v)}" in ptx]
    if want_ptx and with_ptx:
        newest = max(with_ptx, key=_arch_key)
        kept = [v + "+PTX" if v == newest else v for v in kept]
    return ";".join(kept), dropped


def default_cuda_arch_list(cuda_home):
    """(TORCH_CUDA_ARCH_LIST, note): DEFAULT_CUDA_ARCH_LIST trimmed to what the toolkit's nvcc
    supports; note says what was dropped (None when nothing was)."""
    targets = nvcc_targets(str(Path(cuda_home) / "bin" / "nvcc"))
    if targets is None:
        return DEFAULT_CUDA_ARCH_LIST, "nvcc cannot list its targets; kept the full default"
    kept, dropped = trim_cuda_arch_list(DEFAULT_CUDA_ARCH_LIST, *targets)
    if not kept:
        raise SystemExit(f"nvcc in {cuda_home} supports none of {DEFAULT_CUDA_ARCH_LIST}; set TORCH_CUDA_ARCH_LIST")
    note = f"this nvcc cannot build {', '.join(dropped)}; dropped from the default" if dropped else None
    return kept, note


def arch_list_from_gencode(flags):
    """The TORCH_CUDA_ARCH_LIST spelling ("8.0;12.0+PTX") of nvcc -gencode flags, as torch's
    cpp_extension makes them from the list (it also expands names such as "Hopper")."""
    sass, ptx = set(), set()
    for flag in flags:
        match = re.fullmatch(r"-gencode=arch=compute_(\w+),code=(sm|compute)_(\w+)", flag)
        if match:
            (sass if match.group(2) == "sm" else ptx).add(match.group(3))
    # "120" -> "12.0", "90a" -> "9.0a"
    versions = {f"{d[:-1]}.{d[-1]}" if d[-1].isdigit() else f"{d[:-2]}.{d[-2:]}": d for d in sass | ptx}
    return ";".join(v + ("+PTX" if versions[v] in ptx else "") for v in sorted(versions, key=_arch_key))


def write_cuda_arch_header(folder, arch_list):
    """folder/minilvlm_cuda_archs.h, defining MINILVLM_CUDA_ARCH_LIST (csrc/registration.cpp). The
    file is rewritten only when its text changes, so an unchanged list recompiles nothing."""
    path = Path(folder) / "minilvlm_cuda_archs.h"
    text = ("// Generated by the build (csrc/build_support.py): the architectures of the CUDA kernels.\n"
            f"#define MINILVLM_CUDA_ARCH_LIST \"{arch_list}\"\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


if __name__ == "__main__":
    import sys
    if sys.argv[1:] == ["cuda-home"]:
        print(find_cuda_home() or "")
    elif sys.argv[1:] == ["cuda-arch-list"]:
        home = find_cuda_home()
        print(default_cuda_arch_list(home)[0] if home else "")
    elif len(sys.argv) in (3, 4) and sys.argv[1] == "emu-flags":
        print(";".join(emu_flags(sys.argv[2], sys.argv[3] if len(sys.argv) == 4 else None)))
    else:
        sys.exit("usage: python csrc/build_support.py cuda-home | cuda-arch-list | emu-flags {kernel,runtime,link} [address]")
