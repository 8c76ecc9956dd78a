#!/usr/bin/env bash
# tools/gpu_check.sh: every check that needs a real NVIDIA GPU, in one go, from a fresh clone:
#   1. install (a venv with the CUDA build of torch, then the extension for the local GPU's
#      architecture; the command is printed first so it can be run by hand);
#   2. every CUDA kernel against its reference on the device, FusedAdamW and ZeroAdamW against
#      torch.optim.AdamW (ZeroAdamW over NCCL when two GPUs are present), 200 demo steps on CUDA
#      against the CPU, fp16 with loss scaling, a GPU run resumed on the CPU (pytest -m gpu);
#   3. the kernel benchmarks (tests/gpu/bench_kernels.py, bench_block_kernels.py), with achieved
#      GB/s against the device's peak.
# About 8 minutes on one H100. Usage: bash tools/gpu_check.sh [--no-install]
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
stamp() { echo "=== [$(( $(date +%s) - start ))s] $*"; }

arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1)
install="python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt -r requirements-test.txt && TORCH_CUDA_ARCH_LIST=\"$arch\" MAX_JOBS=\$(nproc) pip install --no-build-isolation -e ."
echo "install command: $install"
nvidia-smi --query-gpu=name,compute_cap,memory.total --format=csv
if [ "${1:-}" != "--no-install" ]; then
    stamp "install"
    bash -c "$install" > gpu_check_install.log 2>&1 || { tail -n 40 gpu_check_install.log; exit 1; }
fi
. .venv/bin/activate
python -c "import torch, minilvlm; assert torch.cuda.is_available(); assert torch.ops.minilvlm.built_with_cuda(); print('torch', torch.__version__, 'on', torch.cuda.get_device_name())"

stamp "GPU tests (pytest -m gpu)"
python -m pytest -q -m gpu -rs tests/gpu

stamp "kernel benchmarks"
python -m tests.gpu.bench_kernels
python -m tests.gpu.bench_block_kernels

stamp "done"
