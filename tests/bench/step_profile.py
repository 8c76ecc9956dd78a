"""Where a training step's time goes: GEMMs and attention against everything else, and the GEMMs'
achieved FLOP/s against bare `torch.mm` calls of the same shapes (the floor, measured in the same
process, not assumed). Used by tests/bench/train_step_worker.py --profile.

GEMM time is the self time of aten::mm, addmm, bmm, baddbmm and the matmul ops they may dispatch to,
plus every scaled-dot-product-attention op, as torch.profiler records them on the CPU. The rest of
the step (norms, activations, casts, the optimizer, Python) is "other"."""
import time

import torch
from torch.profiler import ProfilerActivity, profile

from tests.bench.common import median_ms

GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation")
ATTENTION_MARK = "scaled_dot_product"


def _is_gemm(name):
    return name in GEMM_OPS


def _is_attention(name):
    return ATTENTION_MARK in name or "flash_attention" in name


def _gemm_dims(name, shapes):
    """(batch, M, K, N) of a GEMM event from its input shapes, or None when they are not recorded."""
    shapes = [s for s in shapes if s]
    if name in ("aten::addmm", "aten::_addmm_activation", "aten::baddbmm"):
        shapes = shapes[1:]   # (bias or input, a, b)
    if len(shapes) < 2:
        return None
    a, b = shapes[0], shapes[1]
    if len(a) == 2 and len(b) == 2:
        return 1, a[0], a[1], b[1]
    if len(a) == 3 and len(b) == 3:
        return a[0], a[1], a[2], b[2]
    return None


def _bare_mm_seconds(dims, dtype):
    """The median time of a bare torch.mm / torch.bmm of these dims in `dtype`."""
    batch, m, k, n = dims
    g = torch.Generator().manual_seed(0)
    if batch == 1:
        a, b = torch.randn(m, k, generator=g).to(dtype), torch.randn(k, n, generator=g).to(dtype)
        return median_ms(lambda: torch.mm(a, b), reps=5, warmup=1) / 1e3
    a, b = torch.randn(batch, m, k, generator=g).to(dtype), torch.randn(batch, k, n, generator=g).to(dtype)
    return median_ms(lambda: torch.bmm(a, b), reps=5, warmup=1) / 1e3


def profile_step(step, steps, gemm_dtype):
    """The profile of `steps` calls of step(), per step: wall, GEMM and attention seconds, GEMM FLOPs,
    and the bare-mm floor of the same GEMMs in gemm_dtype (the dtype the step's matmuls run in)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - start) / steps
    gemm_s = attention_s = flop = floor_s = 0.0
    for event in prof.key_averages(group_by_input_shape=True):
        seconds = event.self_cpu_time_total / 1e6 / steps
        if _is_attention(event.key):
            attention_s += seconds
        elif _is_gemm(event.key):
            gemm_s += seconds
            dims = _gemm_dims(event.key, event.input_shapes)
            if dims is not None:
                calls = event.count / steps
                flop += 2.0 * dims[0] * dims[1] * dims[2] * dims[3] * calls
                floor_s += _bare_mm_seconds(dims, gemm_dtype) * calls
    return {"profile_wall_s": wall, "gemm_s": gemm_s, "attention_s": attention_s,
            "other_s": max(wall - gemm_s - attention_s, 0.0), "gemm_flop": flop, "bare_mm_s": floor_s}
