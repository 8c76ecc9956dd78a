"""End-to-end llava training step on this CPU: minilvlm against transformers'
LlavaForConditionalGeneration with torch.optim.AdamW(fused=True), and minilvlm with
MINILVLM_BACKEND=reference. Same architecture, batch and frozen tower; each in its own process.

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


def measure(which, steps=7, **env):
    proc = subprocess.run([sys.executable, "-m", "tests.bench.train_step_worker", which, str(steps)], cwd=ROOT,
                          env=dict(os.environ, **env), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_llava_train_step():
    runs = {"minilvlm": measure("minilvlm"),
            "transformers + AdamW(fused=True)": measure("transformers"),
            "minilvlm, MINILVLM_BACKEND=reference": measure("minilvlm", MINILVLM_BACKEND="reference")}
    base = runs["transformers + AdamW(fused=True)"]["median_s"]
    rows = [[name, f"{r['median_s'] * 1e3:.0f}", f"{r['samples_per_s']:.1f}", f"{r['tokens_per_s']:.0f}",
             f"{r['peak_rss_mb']:.0f}", f"{r['trained_params'] / 1e6:.2f}M", f"{base / r['median_s']:.2f}x"]
            for name, r in runs.items()]
    print_table("llava train step (batch 8 x 256 tokens, 64 image tokens; CLIP-style ViT 4x256, LLaMA-style LM "
                f"4x512, vocab 8192), {os.cpu_count()} cores",
                ["implementation", "ms/step", "samples/s", "tokens/s", "peak RSS MB", "trained", "vs transformers"],
                rows)
    trained = {r["trained_params"] for r in runs.values()}
    assert len(trained) == 1, f"the implementations train different parameter counts: {trained}"
