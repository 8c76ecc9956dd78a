"""train.sharding = "fsdp" (FSDP2 over gloo on the CPU): the loss curve of 2 and 3 ranks (uneven
shards) against one process, the bytes a rank holds, resume after SIGKILL at the same and another
world size, a rank killed mid-step, and the tools reading the sharded checkpoints."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from minilvlm.recipes.run_folder import latest
from tests.train.test_kill_resume import ENV, ROOT, TINY, descendants, finish, kill_at_random_step, launch, losses

FSDP = ["train.sharding=fsdp"]
# 12 rows split into micro-batches of 2 over 1, 2 or 3 ranks.
BATCH_12 = ["train.global_batch=12", "train.micro_batch=2"]


def curve_difference(a, b):
    assert sorted(a) == sorted(b)
    return max(abs(a[s] - b[s]) / abs(a[s]) for s in a)


@pytest.mark.parametrize("world, precision, tolerance", [(2, "fp32", 1e-4), (3, "fp32", 1e-4),
                                                         (2, "bf16-autocast", 2e-2)])
def test_fsdp_follows_the_single_process_curve(tmp_path, world, precision, tolerance):
    extra = ["train.steps=20", "train.ckpt_every=0", f"train.precision={precision}", *BATCH_12]
    one = tmp_path / "one"
    finish(launch(one, 1, extra))
    sharded = tmp_path / "sharded"
    finish(launch(sharded, world, extra + FSDP))
    worst = curve_difference(losses(one), losses(sharded))
    assert worst <= tolerance, f"largest relative difference {worst:.2e} at {world} ranks, {precision}"


def fsdp_against_one_process(tmp_path, extra, steps=6):
    common = [f"train.steps={steps}", "train.ckpt_every=0", *BATCH_12, *extra]
    one = tmp_path / "one"
    finish(launch(one, 1, common))
    sharded = tmp_path / "sharded"
    finish(launch(sharded, 2, common + FSDP))
    return curve_difference(losses(one), losses(sharded))


@pytest.mark.parametrize("extra", [["train.activation_checkpointing=true"], ["train.reshard_after_forward=false"]],
                         ids=["activation_checkpointing", "zero2"])
def test_fsdp_composes_with_activation_checkpointing_and_zero2(tmp_path, extra):
    worst = fsdp_against_one_process(tmp_path, extra)
    assert worst <= 1e-4, f"largest relative difference {worst:.2e}"


def test_lora_trains_under_fsdp(tmp_path):
    """LoRA's frozen base is sharded with its adapters; only the adapters (and projector) get state."""
    base = tmp_path / "base"
    finish(launch(base, 1, ["train.steps=2", "train.ckpt_every=2"]))
    lora = [f"model.init_from={json.dumps(str(latest(base)))}", "model.lora.rank=2", "model.lora.alpha=4.0"]
    worst = fsdp_against_one_process(tmp_path, lora)
    assert worst <= 1e-4, f"largest relative difference {worst:.2e}"


def held_bytes(world, extra):
    args = [*TINY, "train.ckpt_every=0", *extra]
    worker = [sys.executable, "-m", "tests.train.fsdp_worker", *args]
    cmd = worker if world == 1 else [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world),
                                      "-m", "tests.train.fsdp_worker", *args]
    out = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    line = next(line for line in out.stdout.splitlines() if line.startswith("BYTES "))
    return json.loads(line[6:])


def test_each_rank_holds_at_most_55_percent_of_the_single_process_bytes(tmp_path):
    one = held_bytes(1, [f"train.run_dir={json.dumps(str(tmp_path / 'one'))}"])
    two = held_bytes(2, [f"train.run_dir={json.dumps(str(tmp_path / 'two'))}", *FSDP])
    for part in ("weights", "grads", "optimizer_state"):
        assert two[part] <= 0.55 * one[part], (part, two[part], one[part])


def test_sigkill_then_resume_at_the_same_and_at_another_world_size(tmp_path):
    steps = 30
    full = tmp_path / "full"
    finish(launch(full, 2, [f"train.steps={steps}", *FSDP, *BATCH_12]))
    reference = losses(full)
    killed = tmp_path / "killed"
    kill_at_random_step(killed, 2, steps, seed=5, extra=[*FSDP, *BATCH_12])
    start = int(latest(killed).name.split("_")[1])
    assert start < steps and (latest(killed) / "dcp" / ".metadata").is_file()
    other = tmp_path / "other"
    subprocess.run(["cp", "-r", str(killed), str(other)], check=True)
    finish(launch(killed, 2, resume=True))
    after = losses(killed)
    for step in range(start + 1, steps + 1):
        assert after[step] == reference[step], f"step {step} after resuming from step {start}"   # bitwise
    finish(launch(other, 3, resume=True))   # resharded from 2 ranks to 3 by DCP
    moved = losses(other)
    assert curve_difference({s: reference[s] for s in range(start + 1, steps + 1)},
                            {s: moved[s] for s in range(start + 1, steps + 1)}) <= 1e-4
    one = tmp_path / "one_process"   # and in one process, from the same sharded checkpoint
    subprocess.run(["cp", "-r", str(full), str(one)], check=True)
    subprocess.run(["rm", "-rf", str(one / "checkpoints" / f"step_{steps:06d}")], check=True)
    finish(launch(one, 1, resume=True))
    assert latest(one).name == f"step_{steps:06d}" and (latest(one) / "model.safetensors").is_file()


def test_a_rank_killed_mid_step_takes_every_rank_down_within_the_timeout(tmp_path):
    env = dict(ENV, MINILVLM_DIST_TIMEOUT="20")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--monitor_interval", "0.5",
           str(ROOT / "tools" / "train.py"), *TINY, *FSDP, "train.steps=400", f"train.run_dir={json.dumps(str(run))}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while not (run / "metrics.jsonl").is_file() or len((run / "metrics.jsonl").read_text().splitlines()) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.1)
    workers = [pid for pid in descendants(proc.pid) if b"train.py" in open(f"/proc/{pid}/cmdline", "rb").read()]
    os.kill(workers[-1], signal.SIGKILL)
    killed_at = time.monotonic()
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert time.monotonic() - killed_at < 60
    assert not [pid for pid in descendants(proc.pid)]


def test_tools_read_a_sharded_checkpoint_and_consolidate_it(tmp_path):
    run = tmp_path / "run"
    finish(launch(run, 2, ["train.steps=4", *FSDP]))
    folder = latest(run)
    assert not (folder / "model.safetensors").exists()
    result = subprocess.run([sys.executable, "tools/eval.py", str(run), "--device", "cpu", "--out",
                             str(tmp_path / "r.json")], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert json.loads((tmp_path / "r.json").read_text())["accuracy"] == summary["accuracy"]
    result = subprocess.run([sys.executable, "tools/consolidate.py", str(folder)], cwd=ROOT, env=ENV,
                            capture_output=True, text=True)
    assert result.returncode == 0 and (folder / "model.safetensors").is_file(), result.stderr[-2000:]
