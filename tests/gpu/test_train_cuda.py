"""The trainer on a real GPU: 200 demo steps on CUDA against the same steps on the CPU, and a
resume that crosses devices. Skipped here (no CUDA device); run by tools/gpu_check.sh."""
import json
import subprocess
import sys

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

# The demo's model and data, 200 steps, logged every 10, the tower pretrained briefly.
DEMO_200 = ["data.demo_sizes={train = 4000, val = 50, test = 50}", "train.steps=200", "train.log_every=10",
            "train.eval_every=0", "train.ckpt_every=100", "train.vision_pretrain_steps=100", "optim.warmup_steps=20"]
# bf16's unit roundoff is 2^-8; a loss curve of 200 steps may drift by a few of them between two
# devices whose GEMMs sum in different orders.
CURVE_RTOL = 0.03


def run_demo(run_dir, device, extra=()):
    command = [sys.executable, "tools/train.py", f"train.run_dir={json.dumps(str(run_dir))}",
               f"train.device={device}", *DEMO_200, *extra]
    subprocess.run(command, check=True, timeout=900)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return rows


@pytest.mark.parametrize("precision", ["fp32", "bf16-autocast"])
def test_200_demo_steps_on_cuda_follow_the_cpu_curve(tmp_path, precision):
    cpu = run_demo(tmp_path / "cpu", "cpu", [f"train.precision={precision}"])
    gpu = run_demo(tmp_path / "gpu", "cuda", [f"train.precision={precision}"])
    cpu_curve = [r["loss"] for r in cpu if "loss" in r]
    gpu_curve = [r["loss"] for r in gpu if "loss" in r]
    assert len(cpu_curve) == len(gpu_curve) == 20
    worst = max(abs(g - c) / abs(c) for c, g in zip(cpu_curve, gpu_curve))
    assert worst <= CURVE_RTOL, (worst, cpu_curve, gpu_curve)
    logged = [r for r in gpu if "loss" in r]
    assert all(r["mem/peak_allocated_gb"] > 0 for r in logged)
    assert all(0 < r["mfu"] < 1 for r in logged if "mfu" in r)


def test_fp16_autocast_trains_with_a_loss_scale(tmp_path):
    rows = run_demo(tmp_path / "fp16", "cuda", ["train.precision=fp16-autocast"])
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0] and all(r["loss_scaler/scale"] >= 1 for r in rows if "loss" in r)


def test_a_gpu_run_resumes_on_the_cpu_and_says_what_did_not_carry_over(tmp_path):
    run = tmp_path / "run"
    run_demo(run, "cuda", ["train.stop_at=100"])
    resumed = subprocess.run([sys.executable, "tools/train.py", "--resume", str(run), "train.device=cpu"],
                             check=True, capture_output=True, text=True, timeout=900)
    assert "resumed from" in resumed.stderr and "CUDA generator state" in resumed.stderr
