"""Tests that need a real GPU (marker `gpu`; `python -m pytest -m gpu`). Every test here skips with the
reason "no CUDA device" where torch.cuda.is_available() is false. The checks themselves live in
checks.py and are written against a device, so tests/ops/test_gpu_checks_on_cpu.py runs them on the CPU
kernels (small shapes) everywhere. bench_kernels.py is the kernel benchmark (`python -m tests.gpu.bench_kernels`)."""
import pytest
import torch

# Every test module here starts with `pytestmark = GPU`.
GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
