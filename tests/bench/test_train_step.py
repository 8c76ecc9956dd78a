"""End-to-end training steps on this CPU, each implementation in its own process.

llava: minilvlm against transformers' LlavaForConditionalGeneration with
torch.optim.AdamW(fused=True), and minilvlm with MINILVLM_BACKEND=reference; the same architecture,
batch and frozen tower, in fp32 and under bf16 autocast (both stacks).
mma: minilvlm's native backend against MINILVLM_BACKEND=reference, with LaVIN's adapter dropout
(0.1) and without it, and the step with adapters that cost nothing (the ceiling of any speed-up).

Run: python -m pytest -m bench tests/bench/test_train_step.py -s
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench.common import print_table

pytestmark = pytest.mark.bench
ROOT = Path(__file__).resolve().parents[2]
HEADER = ["implementation", "ms/step", "samples/s", "tokens/s", "peak RSS MB", "trained", "speed-up"]


def measure(which, precision, dropout=0.0, steps=7, **env):
    proc = subprocess.run([sys.executable, "-m", "tests.bench.train_step_worker", which, precision, str(steps),
                           str(dropout)], cwd=ROOT, env=dict(os.environ, **env), capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_rounds(configs, rounds=2):
    """{name: the fastest of `rounds` measurements}, the configurations taking turns, so that a slow
    spell of this shared machine does not land on one implementation only."""
    best = {}
    for _ in range(rounds):
        for name, (args, env) in configs.items():
            r = measure(*args, **env)
            if name not in best or r["median_s"] < best[name]["median_s"]:
                best[name] = r
    return best


def rows(runs, base):
    return [[name, f"{r['median_s'] * 1e3:.0f}", f"{r['samples_per_s']:.1f}", f"{r['tokens_per_s']:.0f}",
             f"{r['peak_rss_mb']:.0f}", f"{r['trained_params'] / 1e6:.2f}M", f"{base / r['median_s']:.2f}x"]
            for name, r in runs.items()]


def test_llava_train_step():
    configs = {}
    for precision in ("fp32", "bf16"):
        configs[f"minilvlm {precision}"] = (("minilvlm", precision), {})
        configs[f"transformers + AdamW(fused=True) {precision}"] = (("transformers", precision), {})
        configs[f"minilvlm {precision}, MINILVLM_BACKEND=reference"] = (("minilvlm", precision),
                                                                        {"MINILVLM_BACKEND": "reference"})
    runs = measure_rounds(configs)
    base = runs["transformers + AdamW(fused=True) fp32"]["median_s"]
    print_table("llava train step (batch 8 x 256 tokens, 64 image tokens; CLIP-style ViT 4x256 frozen, LLaMA-style "
                f"LM 4x512, vocab 8192), {os.cpu_count()} cores; speed-up against transformers fp32", HEADER,
                rows(runs, base))
    same = runs["transformers + AdamW(fused=True) bf16"]["median_s"] / runs["minilvlm bf16"]["median_s"]
    fp32 = base / runs["minilvlm fp32"]["median_s"]
    print(f"minilvlm against transformers at the same precision: fp32 {fp32:.2f}x, bf16 {same:.2f}x "
          f"(target 1.5x: {'met' if min(fp32, same) >= 1.5 else 'MISSED'})")
    trained = {r["trained_params"] for r in runs.values()}
    assert len(trained) == 1, f"the implementations train different parameter counts: {trained}"


def test_mma_train_step():
    configs = {}
    for precision, dropout in (("fp32", 0.1), ("fp32", 0.0), ("bf16", 0.1), ("bf16", 0.0)):
        for backend in ("native", "reference"):
            configs[f"mma {precision} dropout {dropout}, {backend}"] = (("mma", precision, dropout),
                                                                        {"MINILVLM_BACKEND": backend})
    for precision in ("fp32", "bf16"):
        configs[f"mma {precision}, adapters free (the floor)"] = (("mma-free-adapters", precision), {})
    runs = measure_rounds(configs)
    table = []
    for name, r in runs.items():
        reference = name.replace("native", "reference")
        if "floor" in name:
            reference = f"mma {name.split()[1].rstrip(',')} dropout 0.0, reference"
        table += rows({name: r}, runs[reference]["median_s"])
    print_table("mma train step (the same ViT and LM frozen, MM-Adapters in all 8 blocks, half the batch text-only), "
                f"{os.cpu_count()} cores; speed-up against the reference backend", HEADER, table)
    trained = {r["trained_params"] for r in runs.values()}
    assert len(trained) == 1, f"the backends train different parameter counts: {trained}"
    print("speed-up of the floor = the most any adapter kernel could give this step (target 1.5x)")
