"""Build helpers shared by setup.py, CMakeLists.txt and tools/cuda_check.py (no torch import here).

It lives in csrc/, beside the source list it reads, and is loaded by path
(runpy.run_path): csrc/ never goes on sys.path, where its folders cuda/ and common/ would pass
for namespace packages, and it is no package, so `pip install -e .` never installs it.

    python csrc/build_support.py cuda-home    # print the CUDA toolkit root (empty if none): for CMake
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
    if sys.argv[1:] != ["cuda-home"]:
        sys.exit("usage: python csrc/build_support.py cuda-home")
    print(find_cuda_home() or "")
