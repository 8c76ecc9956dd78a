"""ZeroAdamW on CPU with gloo at 2 and 3 ranks (torch.multiprocessing), and under torchrun."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from minilvlm.optim import FusedAdamW, consolidate, save_consolidated
from tests.optim import zero_worker

ROOT = Path(__file__).resolve().parents[2]


def run(world, scenario, tmp_path, **kwargs):
    out = tmp_path / f"{scenario}-w{world}"
    out.mkdir(parents=True, exist_ok=True)
    init_file = out / "init"
    kwargs = {k: (str(v).removeprefix("torch.") if isinstance(v, torch.dtype) else v) for k, v in kwargs.items()}
    mp.spawn(zero_worker.worker, args=(world, str(init_file), str(out), scenario, kwargs), nprocs=world)
    return [json.loads((out / f"result-{r}.json").read_text()) for r in range(world)]


@pytest.mark.parametrize("world", [2, 3])
def test_fp32_parity_uneven_size_and_memory(world, tmp_path):
    results = run(world, "parity", tmp_path, dtype=torch.float32, master=False, max_norm=None)
    n = results[0]["numel"]
    assert n % world != 0
    for r in results:
        assert r["param_rel"] <= 1e-6
        per_rank = -(-n // world)  # ceil(N / W) elements, plus at most 16 elements of alignment
        for elems in r["state_elems"]:
            assert per_rank <= elems <= per_rank + 16
        assert r["state_bytes"] == sum(4 * e for e in r["state_elems"])


@pytest.mark.parametrize("world", [2, 3])
def test_bf16_params_with_fp32_masters(world, tmp_path):
    for r in run(world, "parity", tmp_path, dtype=torch.bfloat16, master=True, max_norm=None):
        assert r["master_rel"] <= 1e-6
        assert r["param_is_rounded_master"]
        assert r["param_rel"] == 0.0


@pytest.mark.parametrize("world", [2, 3])
def test_parity_with_clipping(world, tmp_path):
    for r in run(world, "parity", tmp_path, dtype=torch.float32, master=False, max_norm=0.5):
        assert r["param_rel"] <= 1e-6


@pytest.mark.parametrize("collectives", ["allreduce", "scatter"])
def test_overflow_on_one_rank_skips_the_step_on_every_rank(collectives, tmp_path, monkeypatch):
    """fp16 with LossScaler at 2 ranks: an inf in one rank's grads, or a found_inf raised on one rank,
    skips the step everywhere with params, moments, masters and step counts untouched; the scale
    halves after the overflow; the run ends equal to FusedAdamW that took only the good steps."""
    monkeypatch.setenv("MINILVLM_ZERO_COLLECTIVES", collectives)
    for r in run(2, "skip", tmp_path / collectives):
        assert r["skipped"] == [False, False, True, False, True, False]
        assert r["scales"] == [256.0, 256.0, 128.0, 128.0, 128.0, 128.0]
        assert r["unchanged"] == [True, True]
        assert r["steps"] == [4]
        assert r["param_rel"] <= 1e-6


def test_gradient_accumulation_communicates_only_at_step(tmp_path):
    for r in run(2, "accumulate", tmp_path):
        assert r["collectives_in_backward"] == 0
        assert r["collectives_total"] > 0
        assert r["param_rel"] <= 1e-6


def test_resume_at_other_world_sizes_and_consolidate(tmp_path):
    run(2, "save", tmp_path, out_dir=str(tmp_path))
    for world in (3, 1):
        # max |difference| / max |param| per tensor: resuming at 3 ranks rounds the 1/3 of the mean
        for r in run(world, "resume", tmp_path, out_dir=str(tmp_path)):
            assert r["lr_restored"]
            assert r["param_rel"] <= 1e-6, f"resume at world size {world}"
    # The consolidated state continues in a single process with FusedAdamW.
    from safetensors.torch import load_file
    saved = load_file(str(tmp_path / "params5.safetensors"))
    expected = load_file(str(tmp_path / "params10.safetensors"))
    params = [torch.nn.Parameter(saved[str(i)]) for i in range(len(zero_worker.SHAPES))]
    opt = FusedAdamW(zero_worker.groups(params))
    opt.load_state_dict(consolidate(tmp_path / "ckpt"))
    zero_worker.train_reference(opt, params, range(5, 10), 2, torch.float32)
    assert max(zero_worker.rel_to_max(p, expected[str(i)]) for i, p in enumerate(params)) <= 1e-6
    # ...and as one file on disk.
    save_consolidated(tmp_path / "ckpt", tmp_path / "full.safetensors")
    full = load_file(str(tmp_path / "full.safetensors"))
    state = consolidate(tmp_path / "ckpt")["state"]
    assert set(full) == {f"state.{i}.{k}" for i in state for k in state[i]}
    assert all(torch.equal(full[f"state.{i}.{k}"], state[i][k]) for i in state for k in state[i])
    groups = json.loads((tmp_path / "full.safetensors.json").read_text())["param_groups"]
    assert [g["params"] for g in groups] == [[0, 1], [2, 3], [4]]


def test_checkpoint_errors(tmp_path):
    from minilvlm.optim.zero_checkpoint import read_manifest
    with pytest.raises(FileNotFoundError, match="no ZeRO optimizer manifest"):
        read_manifest(tmp_path)
    (tmp_path / "optim.json").write_text(json.dumps({"format": "minilvlm-zero1", "files": ["missing.safetensors"]}))
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        read_manifest(tmp_path)


def test_needs_a_process_group():
    from minilvlm.optim import ZeroAdamW
    with pytest.raises(RuntimeError, match="needs torch.distributed to be initialised"):
        ZeroAdamW([torch.nn.Parameter(torch.zeros(3))])


@pytest.mark.parametrize("how", ["kill", "raise"])
def test_a_failed_rank_fails_the_launch_quickly(how):
    """One rank dies (SIGKILL) or raises mid-run: torchrun returns non-zero within 60 s."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--monitor_interval", "0.5", "-m", "tests.optim.zero_worker", how],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    elapsed = time.monotonic() - start
    assert proc.returncode != 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert elapsed < 60, f"launcher took {elapsed:.0f} s to fail"


@pytest.mark.parametrize("world", [2, 3])
def test_reduce_scatter_collectives_give_the_same_result(world, tmp_path, monkeypatch):
    """The reduce_scatter_tensor / all_gather_into_tensor form (NCCL's default) on gloo too."""
    monkeypatch.setenv("MINILVLM_ZERO_COLLECTIVES", "scatter")
    for r in run(world, "parity", tmp_path, dtype=torch.bfloat16, master=True, max_norm=0.5):
        assert r["collectives"] == "scatter"
        assert r["master_rel"] <= 1e-6 and r["param_is_rounded_master"]


def test_bad_collectives_choice(monkeypatch, tmp_path):
    monkeypatch.setenv("MINILVLM_ZERO_COLLECTIVES", "ring")
    with pytest.raises(Exception, match="MINILVLM_ZERO_COLLECTIVES='ring'"):
        run(1, "parity", tmp_path, dtype=torch.float32, master=False, max_norm=None)
