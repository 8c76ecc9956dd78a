"""Damaged checkpoints, kills during writes, finished and foreign run folders, and runs that diverge
(issue 17: C1, C2, S1, S2, S3, L3, K2). A damaged newest checkpoint makes --resume fall back to the
previous complete one and say so; nothing is lost or mixed."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from minilvlm import recipes
from minilvlm.data.tokenizer import Tokenizer
from minilvlm.io import WeightsError
from minilvlm.recipes import load_config
from minilvlm.recipes.run_folder import CheckpointError, latest
from minilvlm.train.checkpoint import load_checkpoint, resume_latest
from minilvlm.train.sharding import make_optimizer
from tests.tiny_run import TINY_MODEL
from tests.tools_main import tool_main

ROOT = Path(__file__).resolve().parents[2]
SMALL = TINY_MODEL + ["data.demo_sizes={train = 48, val = 8, test = 8}", "train.global_batch=8", "train.micro_batch=8",
                      "train.steps=6", "train.log_every=1", "train.eval_every=0", "train.ckpt_every=2",
                      "train.vision_pretrain_steps=0", "eval.max_new_tokens=2", "eval.samples=0", "train.threads=1",
                      "train.deterministic=true", "optim.warmup_steps=1"]


def small_run(run_dir, *extra):
    assert tool_main("train")([*SMALL, f"train.run_dir={json.dumps(str(run_dir))}", *extra]) == 0
    return run_dir


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run stopped at step 4 of 6: checkpoints at steps 2 and 4."""
    return small_run(tmp_path_factory.mktemp("crash") / "run", "train.stop_at=4")


def _edit_state(folder, change):
    state = json.loads((folder / "state.json").read_text())
    change(state)
    (folder / "state.json").write_text(json.dumps(state))


def _edit_tensors(path, change):
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


def _first_float(tensors):
    return next(k for k, v in tensors.items() if v.is_floating_point() and v.dim() == 2)


DAMAGE = {
    "model truncated": lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:5000]),
    "model missing": lambda f: (f / "model.safetensors").unlink(),
    "model garbage": lambda f: (f / "model.safetensors").write_bytes(b"\xff" * 4096),
    "model wrong shape": lambda f: _edit_tensors(f / "model.safetensors", lambda t: t.update(
        {_first_float(t): torch.zeros(3, 3)})),
    "model int32 (C2)": lambda f: _edit_tensors(f / "model.safetensors", lambda t: t.update(
        {_first_float(t): t[_first_float(t)].to(torch.int32)})),
    "model bool": lambda f: _edit_tensors(f / "model.safetensors", lambda t: t.update(
        {_first_float(t): t[_first_float(t)] > 0})),
    "model tensor missing": lambda f: _edit_tensors(f / "model.safetensors", lambda t: t.pop(_first_float(t))),
    "optim missing": lambda f: (f / "optim.safetensors").unlink(),
    "optim truncated": lambda f: (f / "optim.safetensors").write_bytes((f / "optim.safetensors").read_bytes()[:999]),
    "optim no exp_avg": lambda f: _edit_tensors(f / "optim.safetensors", lambda t: t.pop("state.0.exp_avg")),
    "optim wrong shape": lambda f: _edit_tensors(f / "optim.safetensors", lambda t: t.update(
        {"state.0.exp_avg_sq": torch.zeros(2)})),
    "optim no rng": lambda f: _edit_tensors(f / "optim.safetensors", lambda t: t.pop("rng.torch")),
    "state empty": lambda f: (f / "state.json").write_text(""),
    "state truncated": lambda f: (f / "state.json").write_text((f / "state.json").read_text()[:50]),
    "state a list": lambda f: (f / "state.json").write_text("[]"),
    "state not UTF-8": lambda f: (f / "state.json").write_bytes(b"{\"step\": \xff}"),
    "state no rng": lambda f: _edit_state(f, lambda s: s.pop("rng")),
    "state rng garbage": lambda f: _edit_state(f, lambda s: s.update(rng={"python": 3, "numpy": "x"})),
    "state no data": lambda f: _edit_state(f, lambda s: s.pop("data")),
    "state no optim": lambda f: _edit_state(f, lambda s: s.pop("optim")),
    "state step text": lambda f: _edit_state(f, lambda s: s.update(step="four")),
    "state optim steps garbage": lambda f: _edit_state(f, lambda s: s["optim"].update(steps={"x": "y"})),
    "state param groups": lambda f: _edit_state(f, lambda s: s["optim"].update(param_groups=[])),
}


def _model_and_optimizer(run_dir):
    cfg = recipes.config_from_dict(json.loads((run_dir / "config.json").read_text()))
    recipe = recipes.of(cfg)
    model = recipe.build_model(cfg, Tokenizer(run_dir))
    recipe.set_stage(model, cfg)
    return recipe, model, make_optimizer(cfg, model, 1)


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_c1_each_damage_is_an_error_naming_the_file_and_resume_falls_back(stopped_run, tmp_path, kind, capsys):
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    newest = run / "checkpoints" / "step_000004"
    DAMAGE[kind](newest)
    recipe, model, optimizer = _model_and_optimizer(run)
    with pytest.raises((CheckpointError, WeightsError)) as info:
        load_checkpoint(newest, recipe, model, optimizer)
    assert "step_000004" in str(info.value)
    folder, state, _ = resume_latest(run, recipe, model, optimizer)
    assert folder.name == "step_000002" and state["step"] == 2
    assert "step_000004 is damaged and is skipped" in capsys.readouterr().err


def test_fallback_through_the_command_line_then_the_run_finishes_as_uninterrupted(stopped_run, tmp_path, capsys):
    full = small_run(tmp_path / "full")
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    DAMAGE["model truncated"](run / "checkpoints" / "step_000004")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 1.0')   # a partial line, as a kill mid-append leaves
    capsys.readouterr()
    assert tool_main("train")(["--resume", str(run), "train.stop_at=0"]) == 0
    err = capsys.readouterr().err
    assert "step_000004 is damaged and is skipped" in err and "resumed from" in err and "step_000002" in err
    losses = lambda r: [(x["step"], x["loss"]) for x in map(json.loads, (r / "metrics.jsonl").read_text().splitlines())
                        if "loss" in x]   # noqa: E731
    assert losses(run) == losses(full)    # bitwise, steps 3-6 again after the fallback
    assert latest(run).name == "step_000006"


def test_c1_no_loadable_checkpoint_and_a_damaged_tokenizer_are_one_line_errors(stopped_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    for folder in (run / "checkpoints").iterdir():
        DAMAGE["state truncated"](folder)
    capsys.readouterr()
    assert tool_main("train")(["--resume", str(run)]) == 2
    assert "no checkpoint loads" in capsys.readouterr().err
    shutil.rmtree(run)
    shutil.copytree(stopped_run, run)
    (run / "tokenizer.json").write_text('{"model": ')
    assert tool_main("train")(["--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "tokenizer.json" in err and "Traceback" not in err


KILL_DURING_REWRITE = """
import json, os, signal, sys
from pathlib import Path
calls = [0]
real = json.dumps
def dying(*args, **kwargs):
    calls[0] += 1
    if calls[0] == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
json.dumps = dying
from minilvlm.train.logging import MetricsLog
MetricsLog(Path(sys.argv[1]), resume_step=int(sys.argv[2]))
"""


def test_s1_a_kill_while_metrics_are_rewritten_loses_nothing(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 41))
    path.write_text(rows)
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_REWRITE, str(path), "30"], cwd=ROOT, timeout=120,
                          capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert path.read_text() == rows   # the rewrite is atomic: the old file stays whole


def test_s2_s3_stale_temp_files_go_and_a_finished_run_is_not_rerun(tmp_path, capsys):
    run = small_run(tmp_path / "run")
    stale = [run / "checkpoints" / "step_000006" / ".model.safetensors.x1y2.tmp", run / ".metrics.jsonl.ab.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 1000)
    before = (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert tool_main("train")(["--resume", str(run)]) == 0
    assert "is complete" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_text() == before   # no second final evaluation row
    assert not any(p.exists() for p in stale)
    assert tool_main("train")(["--resume", str(run), "train.steps=7"]) == 0   # more steps: it goes on
    assert latest(run).name == "step_000007"


def test_l3_a_run_folder_in_use_is_refused_and_overwrite_starts_anew(tmp_path, capsys):
    run = small_run(tmp_path / "run", "train.steps=4")
    before = (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert tool_main("train")([*SMALL, f"train.run_dir={json.dumps(str(run))}", "train.steps=2"]) == 2
    assert "holds a run (config.json, metrics.jsonl, checkpoints, summary.json)" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_text() == before and latest(run).name == "step_000004"
    assert tool_main("train")([*SMALL, f"train.run_dir={json.dumps(str(run))}", "train.steps=2", "--overwrite"]) == 0
    assert latest(run).name == "step_000002" and not (run / "checkpoints" / "step_000004").exists()
    other = tmp_path / "not_a_run"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert tool_main("train")([*SMALL, f"train.run_dir={json.dumps(str(other))}", "--overwrite"]) == 2
    assert "does not look like a run folder" in capsys.readouterr().err and (other / "notes.txt").is_file()


def test_k2_a_diverging_run_stops_and_its_last_good_checkpoint_stays_the_latest(tmp_path, capsys):
    run = tmp_path / "run"
    rc = tool_main("train")([*SMALL, f"train.run_dir={json.dumps(str(run))}", "optim.lr=1e30", "train.ckpt_every=1",
                             "train.deterministic=false"])
    err = capsys.readouterr().err
    assert rc == 2 and "NaN or infinite" in err and "Traceback" not in err
    assert latest(run).name == "step_000001"
    state = load_file(latest(run) / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
