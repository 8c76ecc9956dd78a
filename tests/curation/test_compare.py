"""tools/compare.py (minilvlm/curation/compare.py): the comparison files are checked key by key, the
placeholders take the base run, and every comparison under configs/compare loads and runs a few steps of
each arm from a tiny base (real run processes), with the table's figures read back from the runs."""
import json
from pathlib import Path

import pytest

from minilvlm.config import ConfigError
from minilvlm.curation.compare import format_table, read_comparison, run_comparison
from tests.tiny_run import TINY_MODEL
from tests.tools_main import tool_main

COMPARISONS = sorted(Path("configs/compare").glob("*.toml"))
# Every arm shrunk to seconds: the tiny model, a few steps on a small demo set.
TINY_ARMS = TINY_MODEL + ["data.demo_sizes={train=24,val=8,test=12}", "train.steps=2", "train.global_batch=8",
                          "train.micro_batch=8", "optim.warmup_steps=0", "eval.max_new_tokens=4", "eval.batch=6",
                          "model.mma.vision_layers=[1,2]", "train.vision_pretrain_steps=0", "train.threads=1",
                          "model.eve.dim=16", "model.eve.heads=2", "model.eve.patch_size=8", "model.eve.align_layers=[1]"]


def _write(tmp_path, text, name="cmp.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


TWO_ARMS = '''
title = "t"
[[arm]]
name = "a"
[[arm]]
name = "b"
set = ["optim.lr=0"]
'''


@pytest.mark.parametrize("text, message", [
    ("title = 1\nwhat = 2\n" + TWO_ARMS.split("title", 1)[1].split("\n", 1)[1], "unknown keys \\['what'\\]"),
    ('[[arm]]\nname = "a"\n', "at least two \\[\\[arm\\]\\] tables, got 1"),
    ('[[arm]]\nname = "a"\n[[arm]]\nname = "a"\n', "arm names repeat"),
    ('[[arm]]\nname = "a b"\n[[arm]]\nname = "c"\n', "arm name 'a b'"),
    ('[[arm]]\nname = "a"\nset = "x=1"\n[[arm]]\nname = "c"\n', "arm a: set must be a list of strings"),
    ('[[arm]]\nname = "a"\nsteps = 3\n[[arm]]\nname = "c"\n', "unknown keys \\['steps'\\]"),
    ("seeds = 0\n" + TWO_ARMS, "seeds = 0"),
    ('[[arm]]\nname = "a"\nafter = "b"\n[[arm]]\nname = "b"\n', "arm a: after = 'b' names no arm listed before it"),
    ("title = [\n", "not valid TOML"),
])
def test_bad_comparison_files_are_refused_with_the_reason(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        read_comparison(_write(tmp_path, text))


def test_bad_arms_and_placeholders_are_errors_before_any_run(tmp_path, capsys):
    path = _write(tmp_path, TWO_ARMS.replace('"optim.lr=0"', '"model.init_from={base_checkpoint}"'))
    with pytest.raises(ConfigError, match="arm b: .*base_checkpoint.*the comparison names no base"):
        run_comparison(read_comparison(path), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="base .*nowhere"):
        run_comparison(read_comparison(path), tmp_path / "out", base=str(tmp_path / "nowhere"))
    bad_value = _write(tmp_path, TWO_ARMS.replace('"optim.lr=0"', '"optim.lr=fast"'), "bad.toml")
    with pytest.raises(ConfigError, match="arm b: .*optim.lr"):
        run_comparison(read_comparison(bad_value), tmp_path / "out")
    with pytest.raises(ConfigError, match="--arms \\['c'\\]"):
        run_comparison(read_comparison(path), tmp_path / "out", arms=["c"])
    # On the command line each is one error line and exit code 2.
    for argv in ([str(path)], [str(tmp_path / "missing.toml")], [str(path), "--jobs", "0"]):
        assert tool_main("compare")(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1, err


def test_every_comparison_file_loads_and_each_arm_runs_a_few_steps(tiny_run, tmp_path):
    assert COMPARISONS, "configs/compare holds no comparison"
    for path in COMPARISONS:
        comparison = read_comparison(path)
        assert comparison.seeds == 3 and comparison.columns, path
        out = tmp_path / path.stem
        result = run_comparison(comparison, out, seeds=1, jobs=2, extra=TINY_ARMS, base=str(tiny_run))
        assert [r["arm"] for r in result["arms"]] == [a.name for a in comparison.arms]
        for row in result["arms"]:
            assert not row["failed"], (path.name, row["arm"], row["failed"])
            summary = json.loads((out / "runs" / f"{row['arm']}@seed0" / "run" / "summary.json").read_text())
            assert summary["step"] == 2 and row["trained_params"] == summary["trained_params"] > 0
            assert row["accuracy"]["values"][0] is not None
            assert set(row["columns"]) == set(comparison.columns)
        table = format_table(result)
        assert all(f"| {a.name} |" in table for a in comparison.arms)
        assert json.loads(Path(result["written"]).read_text())["arms"] == result["arms"]


def test_lavin_arms_train_what_they_say(tiny_run, tmp_path, capsys):
    """The MMA arm trains a fraction of what full fine-tuning trains, from the base named on the command
    line; a rerun reuses every finished run, also one saved before a setting was added."""
    mma = read_comparison("configs/compare/lavin_mma.toml")
    argv = ["configs/compare/lavin_mma.toml", "--seeds", "1", "--jobs", "2", "--out", str(tmp_path),
            "--base", str(tiny_run), "--arms", "mma", "full", *[f"--set={o}" for o in TINY_ARMS]]
    assert tool_main("compare")(argv) == 0
    rows = {r["arm"]: r for r in json.loads((tmp_path / "lavin_mma.json").read_text())["arms"]}
    assert rows["mma"]["trained_params"] < rows["full"]["trained_params"] / 2   # 0.04M vs 0.70M in the demo
    assert {a.name for a in mma.arms} >= {"mma", "full", "before"}
    capsys.readouterr()
    # A run saved before a setting existed (its trial.json lacks the key) is still the same run: reused.
    spec = tmp_path / "runs" / "mma@seed0" / "trial.json"
    saved = json.loads(spec.read_text())
    del saved["model"]["mma"]["visual_tokens"]
    spec.write_text(json.dumps(saved))
    assert tool_main("compare")(argv) == 0
    assert capsys.readouterr().out.count("reused") == 2
    configs = {a: json.loads((tmp_path / "runs" / f"{a}@seed0" / "trial.json").read_text()) for a in ("mma", "full")}
    assert configs["mma"]["model"]["recipe"] == "mma" and configs["full"]["model"]["recipe"] == "llava"
    assert configs["mma"]["model"]["mma"]["base_checkpoint"].startswith(str(tiny_run))


def test_a_stage_whose_earlier_stage_failed_fails_without_running(tiny_run, tmp_path):
    path = _write(tmp_path, """
[[arm]]
name = "first"
set = ["data.dataset=nowhere.json"]
[[arm]]
name = "second"
after = "first"
set = ["model.init_from={after}/model.safetensors"]
""")
    comparison = read_comparison(path)
    with pytest.raises(ConfigError, match="arm first: .*nowhere.json"):   # checked before anything runs
        run_comparison(comparison, tmp_path / "out", seeds=1, extra=TINY_ARMS)
    # A first stage that fails while running (its loss goes non-finite) takes the second with it.
    broken = _write(tmp_path, """
[[arm]]
name = "first"
set = ["train.nonfinite_limit=1", "optim.lr=1e30"]
[[arm]]
name = "second"
after = "first"
set = ["model.init_from={after}/model.safetensors"]
""", "broken.toml")
    result = run_comparison(read_comparison(broken), tmp_path / "out", seeds=1, extra=TINY_ARMS, arms=["second"])
    rows = {r["arm"]: r for r in result["arms"]}
    assert list(rows) == ["first", "second"]          # asking for the second stage runs the first too
    assert rows["first"]["failed"] and rows["first"]["accuracy"]["mean"] is None
    assert rows["second"]["failed"] == ["its earlier stage first (seed 0) failed"]
    assert not (tmp_path / "out" / "runs" / "second@seed0").exists()
