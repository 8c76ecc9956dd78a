"""Two runs' training-loss curves side by side: how far apart they are over their first N steps.

    python -m tests.bench.compare_loss_curves RUN_A RUN_B [--steps 300] [--window 5]

Used for pure bf16 against bf16 autocast on the demo (docs/benchmarks.md): both runs start from the
same seed and data order, so their curves differ only by rounding. Single logged losses are noisy
(one step's batch each), so the comparison is of moving averages over `window` logged losses (the
demo logs every 10th step: 5 of them span 50 steps), and the largest single gap is printed too: the largest relative
gap between the two smoothed curves, and the mean of each curve over the last window. The tolerance
is our choice, stated here: the smoothed curves stay within 5% of each other (bf16 keeps 8 bits of
mantissa, 0.4% per rounding, and rounding differences compound over hundreds of updates).
"""
import argparse
import json
import sys
from pathlib import Path

TOLERANCE = 0.05


def losses(run_dir, steps):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    by_step = {r["step"]: r["loss"] for r in rows if "loss" in r and r["step"] <= steps}
    return [by_step[s] for s in sorted(by_step)]


def smoothed(values, window):
    return [sum(values[i - window:i]) / window for i in range(window, len(values) + 1)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--window", type=int, default=5, help="logged losses per moving average")
    args = parser.parse_args()
    a, b = losses(args.run_a, args.steps), losses(args.run_b, args.steps)
    if len(a) != len(b) or len(a) < args.window:
        print(f"error: the runs log {len(a)} and {len(b)} losses in their first {args.steps} steps; "
              f"need the same number, at least {args.window}", file=sys.stderr)
        return 2
    sa, sb = smoothed(a, args.window), smoothed(b, args.window)
    gap = max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(sa, sb))
    single = max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))
    print(f"{len(a)} logged steps; largest gap of single logged losses {100 * single:.2f}%; "
          f"moving averages of {args.window}: largest relative gap {100 * gap:.2f}% "
          f"(tolerance {100 * TOLERANCE:.0f}%: {'within' if gap <= TOLERANCE else 'OUTSIDE'}); "
          f"last window {sa[-1]:.4f} vs {sb[-1]:.4f}; first window {sa[0]:.4f} vs {sb[0]:.4f}")
    return 0 if gap <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
