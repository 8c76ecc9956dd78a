"""Timing and table helpers shared by the microbenchmarks (run with `pytest -m bench -s`)."""
import time

import torch

# Measured on the development machine (AMD Zen 5, 2 cores); printed beside our figures.
MACHINE_RMW_GBS = 55.0
MACHINE_TRIAD_GBS = 39.0


def median_ms(fn, reps=15, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] * 1e3


def rmw_bandwidth_gbs(numel=50_000_000):
    """a.add_(b): read a and b, write a (12 bytes per fp32 element), the bandwidth ceiling of an update."""
    a, b = torch.randn(numel), torch.randn(numel)
    ms = median_ms(lambda: a.add_(b), reps=10)
    return 12 * numel / ms / 1e6


def print_table(title, header, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    line = " | ".join(str(h).ljust(w) for h, w in zip(header, widths))
    print(f"\n{title}\n{line}\n" + "-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)))
