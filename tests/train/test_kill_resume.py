"""Runs killed with SIGKILL, then resumed: the following losses equal, bitwise, those of an
uninterrupted run (deterministic mode). At world size 1 and under torchrun at world size 2, where
the 2-rank loss curve also matches the single-process one. A save killed mid-write leaves the
previous checkpoint intact and resumable."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minilvlm.recipes.run_folder import latest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["data.demo_sizes={train = 48, val = 8, test = 8}", "model.vision.dim=16", "model.vision.n_layers=2",
        "train.vision_pretrain_steps=5", "train.vision_pretrain_batch=8",
        "model.vision.n_heads=2", "model.vision.mlp_dim=16", "model.vision.patch_size=16",
        "model.decoder.dim=16", "model.decoder.n_layers=1", "model.decoder.n_heads=2", "model.decoder.mlp_dim=24",
        "train.global_batch=8", "train.micro_batch=4", "train.log_every=1", "train.eval_every=0",
        "train.ckpt_every=2", "train.deterministic=true", "optim.warmup_steps=2", "eval.max_new_tokens=2",
        "eval.samples=0", "data.demo_seed=3"]
# A generous collective timeout: on a loaded CI machine a rank can wait long for its peer.
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), MINILVLM_DIST_TIMEOUT="120")


def launch(run_dir, world, extra=(), resume=False):
    args = ["--resume", str(run_dir)] if resume else [*TINY, f"train.run_dir={json.dumps(str(run_dir))}"]
    args += list(extra)
    if world == 1:
        cmd = [sys.executable, str(ROOT / "tools" / "train.py"), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world),
               "--monitor_interval", "0.5", str(ROOT / "tools" / "train.py"), *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def logged_step(run_dir):
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except json.JSONDecodeError:  # the line being written right now
            pass
    return max(steps, default=0)


def descendants(pid):
    """Every process below pid (torchrun starts its workers in their own sessions)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_at_random_step(run_dir, world, steps, seed, extra=()):
    """Start a run, SIGKILL it and every rank once it has logged a random step in 3..steps/2 (the kill
    lands a step or two later on a fast machine: what counts is that the run did not finish)."""
    target = random.Random(seed).randint(3, steps // 2)
    proc = launch(run_dir, world, [f"train.steps={steps}", *extra])
    deadline = time.monotonic() + 240
    while logged_step(run_dir) < target:
        assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "the run did not reach the kill step in time"
        time.sleep(0.05)
    for pid in [proc.pid, *descendants(proc.pid)]:  # the launcher and every rank at once
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate(timeout=60)
    return target


@pytest.mark.parametrize("world", [1, 2])
def test_sigkill_then_resume_is_bitwise(world, tmp_path):
    steps = 40  # long enough (about 2 s of steps) to be killed well before the end
    full = tmp_path / "full"
    finish(launch(full, world, [f"train.steps={steps}"]))
    reference = losses(full)
    assert sorted(reference) == list(range(1, steps + 1))

    killed = tmp_path / "killed"
    target = kill_at_random_step(killed, world, steps, seed=world)
    resumed_from = latest(killed)
    assert resumed_from is not None
    start = int(resumed_from.name.split("_")[1])
    assert start < steps, f"the run finished before the kill (target step {target})"
    finish(launch(killed, world, resume=True))
    after = losses(killed)
    assert sorted(after) == list(range(1, steps + 1))
    for step in range(start + 1, steps + 1):
        assert after[step] == reference[step], f"step {step} after resuming from step {start}"  # bitwise



def test_twenty_steps_at_two_ranks_follow_the_single_process_curve(tmp_path):
    runs = {}
    for world in (1, 2):
        runs[world] = tmp_path / f"w{world}"
        finish(launch(runs[world], world, ["train.steps=20", "train.ckpt_every=0"]))
    one, two = losses(runs[1]), losses(runs[2])
    assert sorted(one) == sorted(two) == list(range(1, 21))
    worst = max(abs(one[s] - two[s]) / abs(one[s]) for s in one)
    assert worst <= 1e-4, f"largest relative difference {worst:.2e}"


def test_a_save_killed_mid_write_leaves_the_previous_checkpoint_resumable(tmp_path):
    steps = 6
    full = tmp_path / "full"
    finish(launch(full, 1, [f"train.steps={steps}"]))
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "tests.train.kill_driver", "4", *TINY,
                           f"train.run_dir={json.dumps(str(run))}", f"train.steps={steps}"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert list((run / "checkpoints" / "step_000004").glob("*.tmp-killed")), "the kill did not happen mid-save"
    assert not (run / "checkpoints" / "step_000004" / "state.json").exists()
    assert latest(run).name == "step_000002"
    finish(launch(run, 1, resume=True))
    assert losses(run) == losses(full)
    assert latest(run).name == f"step_{steps:06d}"
