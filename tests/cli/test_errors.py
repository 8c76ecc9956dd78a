"""One error path for every command (issue 16, issue 17 K3/C1/L1-L3): each tool, given one bad
input of each kind, exits with code 2 and prints one `error: ...` line and no traceback; --debug
shows the traceback; --help shows each description once. The listed bad values of tools/train.py
fail before any work is done: in a fresh process, within 10 s of CPU time."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tools_main import TOOLS, tool_main

ROOT = Path(__file__).resolve().parents[2]
TOOL_NAMES = ("train", "eval", "generate", "soup", "ppl_filter", "select_data", "compare", "export_hf", "consolidate")


def check_one_error_line(capsys, rc, needle):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("warning:", "config:"))]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and needle in lines[0], err


@pytest.fixture
def damaged(tiny_run, tmp_path):
    """Copies of the tiny run with one file damaged each: {kind: run folder}."""
    out = {}
    for kind in ("model", "state", "tokenizer", "int32"):
        run = tmp_path / kind
        shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("data", "eval"))
        ckpt = run / "checkpoints" / "step_000030"
        if kind == "model":
            data = (ckpt / "model.safetensors").read_bytes()
            (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
        elif kind == "state":
            (ckpt / "state.json").write_text((ckpt / "state.json").read_text()[:100])
        elif kind == "tokenizer":
            (run / "tokenizer.json").write_text("{not json")
        else:
            from safetensors.torch import load_file, save_file
            tensors = load_file(ckpt / "model.safetensors")
            name = next(k for k, v in tensors.items() if v.is_floating_point())
            tensors[name] = tensors[name].to(__import__("torch").int32)
            save_file(tensors, ckpt / "model.safetensors")
        out[kind] = run
    return out


def test_train_bad_inputs(tmp_path, capsys):
    main = tool_main("train")
    bad_record = tmp_path / "bad.json"
    bad_record.write_text(json.dumps([{"id": "x", "conversations": "not a list"}]))
    (tmp_path / "latin1.toml").write_bytes(b"[train]\nrun_dir = \"\xe9\"\n")
    (tmp_path / "notempty").mkdir()
    (tmp_path / "notempty" / "metrics.jsonl").write_text("{}\n")
    run = [f"train.run_dir={json.dumps(str(tmp_path / 'r'))}", "train.vision_pretrain_steps=0", "train.steps=1"]
    cases = [(["optim.lrr=1"], "did you mean 'optim.lr'"), (["data.template=vicuna"], "data.template = 'vicuna'"),
             (["data.image_mode=square"], "data.image_mode = 'square'"),
             ([str(tmp_path / "nope.toml")], "no such config file"), ([str(tmp_path)], "is a folder"),
             ([str(tmp_path / "latin1.toml")], "not UTF-8"),
             ([f"data.dataset={json.dumps(str(tmp_path / 'none.json'))}"], "data.dataset = "),
             ([f"data.dataset={json.dumps(str(bad_record))}", *run], "field 'conversations' must be list"),
             ([f"data.tokenizer={json.dumps(str(tmp_path / 'tok'))}", *run], "data.tokenizer = "),
             (["model.lm_weights=/etc/passwd", *run], "model.lm_weights = '/etc/passwd'"),
             ([f"train.run_dir={json.dumps(str(tmp_path / 'notempty'))}"], "holds a run (metrics.jsonl)"),
             (["--resume", str(tmp_path)], "config.json not found")]
    for args, needle in cases:
        check_one_error_line(capsys, main(args), needle)


def test_eval_generate_soup_export_on_damaged_runs(tiny_run, damaged, tmp_path, capsys):
    needles = {"model": "model.safetensors", "state": "state.json", "tokenizer": "tokenizer.json", "int32": "I32"}
    for kind, run in damaged.items():
        check_one_error_line(capsys, tool_main("eval")([str(run), "--out", str(tmp_path / "r.json")]), needles[kind])
        check_one_error_line(capsys, tool_main("generate")([str(run), "--prompt", "hi"]), needles[kind])
        check_one_error_line(capsys, tool_main("export_hf")([str(run), "--out", str(tmp_path / f"hf_{kind}")]),
                             needles[kind])
        if kind in ("model", "state"):
            check_one_error_line(capsys, tool_main("soup")([str(run), str(tiny_run), "--out", str(tmp_path / "s")]),
                                 needles[kind])
    for main, args, needle in [
            (tool_main("eval"), [str(tmp_path / "nowhere")], "no such folder"),
            (tool_main("eval"), [str(tiny_run), "--data", str(tmp_path / "none.json")], "no such file"),
            (tool_main("generate"), [str(tiny_run), "--prompt", "hi", "--image", str(tmp_path / "x.png")],
             "cannot read image"),
            (tool_main("generate"), [str(tiny_run), "--prompt", "<image> <image>", "--image", "a.png"], "2 <image> tag"),
            (tool_main("soup"), [str(tiny_run), "--out", str(tmp_path / "s1")], "at least two"),
            (tool_main("ppl_filter"), [str(tmp_path / "none.json"), "--model", str(tiny_run), "--keep", "0.5",
                                       "--out", str(tmp_path / "k.json")], "none.json")]:
        check_one_error_line(capsys, main(args), needle)


def test_l1_l2_outputs_never_overwrite_inputs(tiny_run, tmp_path, capsys):
    ckpt = tiny_run / "checkpoints"
    before = (ckpt / "step_000020" / "model.safetensors").read_bytes()
    soup = tool_main("soup")
    for out in (ckpt / "step_000020", tiny_run, ckpt / "step_000099"):
        check_one_error_line(capsys, soup([str(ckpt / "step_000010"), str(ckpt / "step_000020"), "--out", str(out)]),
                             "--out")
    assert (ckpt / "step_000020" / "model.safetensors").read_bytes() == before
    assert not (ckpt / "step_000099").exists()
    data = tmp_path / "d.json"
    rows = json.loads((tiny_run / "data" / "val.json").read_text())[:6]
    data.write_text(json.dumps(rows))
    filt = tool_main("ppl_filter")
    for out in (data, tiny_run / "config.json"):
        check_one_error_line(capsys, filt([str(data), "--model", str(tiny_run), "--keep", "0.5", "--out", str(out),
                                           "--image-root", str(tiny_run / "data")]), "--out would")
    assert json.loads(data.read_text()) == rows


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="no such config file"):
        tool_main("train")([str(tmp_path / "nope.toml"), "--debug"])


@pytest.mark.parametrize("name", TOOL_NAMES)
def test_help_prints_the_description_once(name, capsys):
    with pytest.raises(SystemExit) as info:
        tool_main(name)(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    first = out.split("\n\n")[1].strip()   # usage, blank line, the description
    assert out.count(first) == 1 and "--debug" in out


LISTED = [["data.template=vicuna"], ["data.image_mode=square"], ["configs/nope.toml"], ["data.dataset=missing.json"],
          ["train.global_batch=-8"], ["optim.lr=inf"], ["optim.min_lr=-1"], ["optim.warmup_steps=-5"],
          ["eval.limit=-1"], ["train.stop_at=-1"], ["eval.split=nope"], ["optim.betas=[0.9,1.5]"],
          ["train.global_batch=0"], ["data.max_len=0"], ["data.num_workers=-1"], ["model.vision.patch_size=7"],
          ["model.decoder.n_heads=3"], ["model.vision.n_heads=5"], ["model.feature_layer=99"], ["eval.batch=0"], ["train.threads=-1"],
          ["optim.schedule=warm_restarts", "optim.restart_steps=0"], ["optim.schedule=warm_restarts",
                                                                      "optim.restart_mult=0"],
          ["train.run_dir=/proc/version/run"], ["optim.eps=nan"], ["optim.weight_decay=-1"]]


def _run_measured(args, cwd, log):
    """Start tools/train.py with its stderr going to `log`; returns (the process, log)."""
    with open(log, "w") as err:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.Popen([sys.executable, str(TOOLS / "train.py"), *args], cwd=cwd, stdout=subprocess.DEVNULL,
                                stderr=err, env=env)   # this checkout's minilvlm, whatever the cwd
    return proc, log


def test_listed_bad_values_fail_fast_in_a_fresh_process(tmp_path):
    """Each listed case of issues 16 and 17 through tools/train.py, as a user runs it: exit code 2, one
    error line, no traceback, and no work done first (under 10 s of CPU time per process, measured
    with wait4; the wall time on a machine of its own is about 4 s, mostly importing torch). Two run
    at a time."""
    pending = [(i, args) for i, args in enumerate(LISTED)]
    running, results = [], []
    while pending or running:
        while pending and len(running) < 2:
            i, args = pending.pop(0)
            extra = [f"train.run_dir={json.dumps(str(tmp_path / 'run'))}"] if "run_dir" not in args[0] else []
            proc, log = _run_measured([*args, *extra], tmp_path, tmp_path / f"err{i}.txt")
            running.append((args, proc, log, time.monotonic()))
        args, proc, log, started = running.pop(0)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        results.append((args, proc.returncode, log.read_text(), usage.ru_utime + usage.ru_stime,
                        time.monotonic() - started))
    for args, code, stderr, cpu, wall in results:
        lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(("warning:", "config:"))]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, stderr)
        assert "Traceback" not in stderr and cpu < 10, (args, cpu, wall)
    assert not (tmp_path / "run").exists()   # nothing was written


def kind_matrix(tiny_run, damaged, tmp_path):
    """{tool: {kind: (args, needle)}}: one bad input of each kind a tool can be given (a bad option
    value, a bad record or image, damaged weights, a missing file)."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": f"x{i}", "conversations": "not a list"} for i in range(4)]))
    text_png = tmp_path / "text.png"
    text_png.write_text("not a picture")
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[[arm]\nname = 'a'\n")
    broken, out, data = str(damaged["model"]), str(tmp_path / "out"), tiny_run / "data"
    ppl = ["--keep", "0.5", "--out", str(tmp_path / "k.json")]
    return {
        "eval": {"config": ([str(tiny_run), "--batch", "0"], "--batch must be at least 1"),
                 "data": ([str(tiny_run), "--data", str(bad)], "wrong_type"),
                 "weights": ([broken, "--out", out], "model.safetensors"),
                 "missing": ([str(tmp_path / "nowhere")], "no such folder")},
        "generate": {"config": ([str(tiny_run), "--prompt", "hi", "--top-p", "2"], "--top-p in (0, 1]"),
                     "data": ([str(tiny_run), "--prompt", "hi", "--image", str(text_png)], "text.png"),
                     "weights": ([broken, "--prompt", "hi"], "model.safetensors"),
                     "missing": ([str(tiny_run), "--prompt", "hi", "--image", str(tmp_path / "x.png")], "x.png")},
        "soup": {"config": ([str(tiny_run), str(tiny_run), "--out", out, "--greedy", "--split", "dev"], "'dev'"),
                 "data": ([str(tiny_run), str(tiny_run), "--out", out, "--greedy", "--data", str(bad)], "wrong_type"),
                 "weights": ([broken, str(tiny_run), "--out", out], "model.safetensors"),
                 "missing": ([str(tmp_path / "nowhere"), str(tiny_run), "--out", out], "nowhere")},
        "ppl_filter": {"config": ([str(bad), "--model", str(tiny_run), "--keep", "2", "--out", out], "--keep"),
                       "data": ([str(bad), "--model", str(tiny_run), *ppl], "wrong_type"),
                       "weights": ([str(tiny_run / "data" / "val.json"), "--model", broken, *ppl], "model.safetensors"),
                       "missing": ([str(tmp_path / "none.json"), "--model", str(tiny_run), *ppl], "none.json")},
        "select_data": {"config": ([*select_base(tiny_run, data), "--steps", "0", "--out", out], "at least 1"),
                        "data": ([*select_base(tiny_run, data, bad), "--steps", "2", "--out", out], "wrong_type"),
                        "weights": ([*select_base(broken, data), "--steps", "2", "--out", out], "model.safetensors"),
                        "missing": ([*select_base(tiny_run, data, tmp_path / "none.json"), "--steps", "2", "--out",
                                     out], "none.json")},
        "compare": {"config": (["configs/compare/lavin_routing.toml", "--out", out, "--jobs", "0"], "--jobs"),
                    "data": ([str(bad_toml), "--out", out], "not valid TOML"),
                    "missing": ([str(tmp_path / "none.toml"), "--out", out], "none.toml")},
        "export_hf": {"config": ([str(tiny_run), "--out", out, "--max-shard-size", "lots"], "--max-shard-size"),
                      "weights": ([broken, "--out", out], "model.safetensors"),
                      "missing": ([str(tmp_path / "nowhere"), "--out", out], "nowhere")},
    }


def select_base(base, data, second=None):
    """tools/select_data.py's arguments up to --steps: two sets of the tiny run's data (or one and `second`)."""
    return ["--base", str(base), "--sets", f"a={data / 'train.json'}", f"b={second or data / 'val.json'}",
            "--heldout", str(data / "val.json")]


@pytest.mark.parametrize("tool", ["eval", "generate", "soup", "ppl_filter", "select_data", "compare", "export_hf"])
def test_each_tool_with_one_bad_input_of_each_kind(tool, tiny_run, damaged, tmp_path, capsys):
    """Issue 16: every tool, one bad input of each kind that it takes: exit code 2, one error line
    naming what is wrong, no traceback and nothing written (export_hf reads no records; compare reads no
    weights itself: its runs do, each failing alone)."""
    for kind, (args, needle) in kind_matrix(tiny_run, damaged, tmp_path)[tool].items():
        check_one_error_line(capsys, tool_main(tool)(args), needle)
        assert not (tmp_path / "out").exists() and not (tmp_path / "k.json").exists(), (tool, kind)


def test_consolidate_refuses_a_missing_folder_and_a_checkpoint_that_is_one_file(tiny_run, tmp_path, capsys):
    """tools/consolidate.py (an FSDP checkpoint's shards as one file; tests/train/test_fsdp.py runs it)."""
    check_one_error_line(capsys, tool_main("consolidate")([str(tmp_path / "nowhere")]), "nowhere")
    check_one_error_line(capsys, tool_main("consolidate")([str(tiny_run)]), "needs no consolidation")
