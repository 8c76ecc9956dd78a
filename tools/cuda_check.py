"""nvcc-compile every CUDA source for sm_80 and sm_90 and fail on our warnings or register spills.

Usage: python tools/cuda_check.py [--arch 80 --arch 90] [--jobs N]
The CMake target `cuda_check` runs this script; CI runs it too. It prints ptxas's per-kernel
report (registers, stack, spills) for our kernels.
"""
import argparse
import os
import re
import runpy
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_build_support = runpy.run_path(str(ROOT / "csrc" / "build_support.py"))
find_cuda_home, read_sources = _build_support["find_cuda_home"], _build_support["read_sources"]

SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
ENTRY = re.compile(r"ptxas info\s*: (?:Compiling entry function|Function properties for) '?([\w$]+)'?(?: for '(sm_\d+)')?")


def torch_includes():
    import torch
    base = Path(torch.__file__).resolve().parent / "include"
    return [base, base / "torch" / "csrc" / "api" / "include"]


def compile_one(nvcc, source, archs, includes, out_dir):
    out = out_dir / (Path(source).stem + ".o")
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    cmd = [nvcc, "-c", str(ROOT / source), "-o", str(out), "-std=c++20", "-O3", "--expt-relaxed-constexpr",
           "-Xptxas", "-v", "-Xcompiler", "-fPIC", "-DMINILVLM_WITH_CUDA=1", *gencode]
    cmd += [f"-I{p}" for p in includes]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return source, proc.returncode, proc.stdout + proc.stderr


def analyse(source, output):
    """(problems, report lines) for one compile log."""
    problems, report = [], []
    ours = str(ROOT / "csrc")
    for line in output.splitlines():
        if "warning" in line.lower() and (ours in line or line.startswith("csrc/")):
            problems.append(f"{source}: warning from our code: {line.strip()}")
    function = None
    for line in output.splitlines():
        match = ENTRY.search(line)
        if match:
            function = match.group(1)
            if match.group(2):
                report.append(f"  {match.group(2)} {function}")
            continue
        if line.strip().startswith("ptxas info") and "Used" in line:
            report.append(f"      {line.split(':', 1)[1].strip()}")
        spill = SPILL.search(line)
        if spill and (int(spill.group(1)) or int(spill.group(2))):
            problems.append(f"{source}: register spill in {function}: {line.strip()}")
    return problems, report


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", default=None, help="compute capability digits, e.g. 80")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", os.cpu_count() or 1)))
    parser.add_argument("--out-dir", default=str(ROOT / "build" / "cuda_check"))
    args = parser.parse_args()
    archs = args.arch or ["80", "90"]
    cuda_home = find_cuda_home()
    if cuda_home is None:
        sys.exit("cuda_check: nvcc not found; set CUDA_HOME")
    nvcc = str(Path(cuda_home) / "bin" / "nvcc")
    sources = read_sources(ROOT, "cuda") + read_sources(ROOT, "check")
    includes = [ROOT / "csrc", Path(cuda_home) / "include", *torch_includes(), sysconfig.get_paths()["include"]]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"cuda_check: {len(sources)} sources, sm_{', sm_'.join(archs)}, {nvcc}")
    failures = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for source, code, output in pool.map(lambda s: compile_one(nvcc, s, archs, includes, out_dir), sources):
            problems, report = analyse(source, output)
            print(f"{source}: {'ok' if code == 0 and not problems else 'FAILED'}")
            print("\n".join(report))
            if code != 0:
                failures.append(f"{source}: nvcc exited with {code}\n{output[-4000:]}")
            failures.extend(problems)
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)
    print("cuda_check: every source compiled with no warnings from our code and no register spills")


if __name__ == "__main__":
    main()
