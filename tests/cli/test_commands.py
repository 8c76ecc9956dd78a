"""The commands of issue 16 beyond their errors: the scorer without an `answer` key (and tools/eval.py
on a plain LLaVA file, its results in the run folder), the one image-root rule on the demo's own
files, the stop when most records are skipped for one reason, --image more than once, the plot of
every accuracy and the held-out loss, optional TensorBoard, the warmup warning and the console
commands with tools/*.py as thin wrappers."""
import json
import shutil
import sys
import tomllib
import types
from importlib import import_module
from pathlib import Path

import pytest
from PIL import Image

from minilvlm.data.records import Record, Turn
from minilvlm.eval.score import is_correct, is_multiple_choice, normalize, question_type, reference
from minilvlm.train.logging import MetricsLog, plot_metrics
from tests.cli.test_errors import check_one_error_line
from tests.tools_main import TOOLS, tool_main

ROOT = Path(__file__).resolve().parents[2]


def _record(reply, **meta):
    return Record("r", [Turn("user", "What colour is the shape?"), Turn("assistant", "first"),
                        Turn("user", "And now?"), Turn("assistant", reply)], meta=meta)


def test_a_record_without_an_answer_is_scored_against_its_last_reply():
    free = _record("A red  circle.")
    assert reference(free) == ("text", "A red  circle.") and question_type(free) == "free_form"
    assert is_correct(free, "a red circle") and is_correct(free, " A RED, circle!")
    assert not is_correct(free, "a blue circle") and not is_correct(free, "first")
    letter = _record("The answer is B.")
    assert reference(letter) == ("letter", "B") and is_multiple_choice(letter)
    assert question_type(letter) == "multiple_choice"
    assert is_correct(letter, "Because of the hint. The answer is (B).") and is_correct(letter, "The answer is B")
    assert not is_correct(letter, "The answer is C.") and not is_correct(letter, "B")
    keyed = _record("The answer is B.", answer="blue", question_type="free_form")   # an answer key still wins
    assert reference(keyed) == ("text", "blue") and is_correct(keyed, "Blue") and not is_correct(keyed, "The answer is B")


@pytest.fixture
def run(tiny_run, tmp_path):
    """A copy of the tiny run that a test may write into."""
    shutil.copytree(tiny_run, tmp_path / "run")
    return tmp_path / "run"


def _plain(run, name, keep=lambda i, r: r):
    """The run's test split as a plain LLaVA file beside it (image and conversations only)."""
    rows = json.loads((run / "data" / "test.json").read_text())
    plain = [keep(i, {k: r[k] for k in ("image", "conversations") if k in r}) for i, r in enumerate(rows)]
    (run / "data" / name).write_text(json.dumps(plain))
    return run / "data" / name, plain


def test_eval_scores_a_plain_llava_file_by_its_replies_into_the_run_folder(run, capsys):
    data, plain = _plain(run, "plain.json")
    assert tool_main("eval")([str(run), "--data", str(data)]) == 0
    out = run / "eval" / "plain_test.json"                       # the default: the run folder, not the cwd
    result = json.loads(out.read_text())
    predictions = [json.loads(line) for line in out.with_name("plain_test.predictions.jsonl").read_text().splitlines()]
    assert result["count"] == len(plain) == len(predictions) and not result["skipped"]
    for row, prediction in zip(plain, predictions):              # by hand, from the file and the replies
        expected = row["conversations"][-1]["value"]
        assert prediction["answer"] in (expected, expected.rsplit(" ", 1)[-1].strip(".()"))
        if prediction["question_type"] == "multiple_choice":
            assert prediction["correct"] == (f"answer is {prediction['answer']}" in prediction["reply"].replace("(", ""))
        else:
            assert prediction["correct"] == (normalize(prediction["reply"]) == normalize(expected))
    assert result["average"] == sum(p["correct"] for p in predictions) / len(predictions) > 0
    assert str(out) in capsys.readouterr().out


def test_the_demo_files_follow_the_image_root_rule(run, tmp_path, capsys):
    """tools/ppl_filter.py RUN/data/val.json --model RUN skips nothing; eval --data reads the same file."""
    out = tmp_path / "kept.json"
    assert tool_main("ppl_filter")([str(run / "data" / "val.json"), "--model", str(run), "--keep", "1",
                                    "--out", str(out)]) == 0
    stats = json.loads((tmp_path / "kept.stats.json").read_text())
    assert not stats["skipped"] and stats["scored"] == 12
    assert tool_main("eval")([str(run), "--data", str(run / "data" / "val.json"), "--split", "val"]) == 0
    assert json.loads((run / "eval" / "val_val.json").read_text())["count"] == 12
    capsys.readouterr()


@pytest.mark.parametrize("tool", ["ppl_filter", "eval"])
def test_most_records_skipped_for_one_reason_is_an_error_naming_it(run, tmp_path, tool, capsys):
    def lose_image(i, row):
        return {**row, "image": f"gone_{i}.png"} if "image" in row and i % 8 else row
    data, plain = _plain(run, "lost.json", lose_image)
    lost = sum(r.get("image", "").startswith("gone_") for r in plain)
    assert lost > len(plain) / 2
    args = ["--model", str(run), "--keep", "1", "--out", str(tmp_path / "k.json")] if tool == "ppl_filter" else []
    rc = tool_main(tool)([str(data), *args] if tool == "ppl_filter" else [str(run), "--data", str(data)])
    check_one_error_line(capsys, rc, "missing_image")
    assert not (tmp_path / "k.json").exists() and not (run / "eval" / "lost_test.json").exists()


def test_generate_takes_image_more_than_once(run, capsys):
    from minilvlm.eval.chat import prompt_inputs
    from minilvlm.eval.load import load_model
    rows = json.loads((run / "data" / "test.json").read_text())
    a, b = [run / "data" / r["image"] for r in rows if "image" in r][:2]
    prompt = "<image> or <image>: which one is red?"
    assert tool_main("generate")([str(run), "--image", str(a), "--image", str(b), "--prompt", prompt,
                                  "--temperature", "0", "--max-new-tokens", "3"]) == 0
    _, images = prompt_inputs(load_model(str(run)), prompt, [a, b])
    assert images.shape[0] == 2
    capsys.readouterr()


def _colour_in(image, box, colour):
    left, top, right, bottom = box
    return any(image.getpixel((x, y)) == colour for x in range(left, right) for y in range(top, bottom))


def test_the_plot_draws_every_accuracy_and_the_held_out_loss(tmp_path):
    from minilvlm.train.logging import _COLOURS
    rows = [{"step": s, "loss": 3.0 - s / 10, "lr": 1e-3} for s in range(1, 11)]
    rows += [{"step": s, "eval/multiple_choice": 0.2 + s / 20, "eval/free_form": 0.1 + s / 30,
              "eval/task/colour": 0.5, "eval/n/free_form": 4, "eval/loss": 2.0 - s / 10} for s in (5, 10)]
    plot_metrics(rows, tmp_path / "m.png")
    image = Image.open(tmp_path / "m.png").convert("RGB")
    for colour in _COLOURS[:3]:                                  # three accuracies, three lines
        assert _colour_in(image, (40, 416, 640, 576), colour), colour
    assert not _colour_in(image, (40, 416, 640, 576), _COLOURS[3])   # eval/n/... and eval/loss are not accuracies
    assert _colour_in(image, (40, 630, 640, 790), (160, 60, 20))


def test_tensorboard_writes_the_same_rows_and_its_absence_is_a_clear_error(tmp_path, monkeypatch):
    from minilvlm.config import ConfigError
    from minilvlm.recipes import load_config
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "tensorboard" else object())
    with pytest.raises(ConfigError, match=r"tensorboard package: pip install -e \.\[tensorboard\]"):
        load_config(None, ["train.tensorboard=true"])
    monkeypatch.undo()
    scalars = []

    class Writer:                                                # torch's SummaryWriter, as our code calls it
        def __init__(self, folder):
            scalars.append(("folder", folder))

        def add_scalar(self, key, value, step):
            scalars.append((key, value, step))

        def flush(self):
            pass

        def close(self):
            scalars.append("closed")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    log = MetricsLog(tmp_path / "metrics.jsonl", tensorboard=tmp_path / "tb")
    log.write({"step": 3, "loss": 1.5, "lr": 0.1, "flag": True, "note": "x"})
    log.close()
    assert scalars == [("folder", str(tmp_path / "tb")), ("loss", 1.5, 3), ("lr", 0.1, 3), "closed"]
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss"] == 1.5


def test_warmup_past_the_last_step_is_a_warning():
    from minilvlm.recipes import load_config
    with pytest.warns(UserWarning, match="warmup_steps = 50 is not below train.steps = 10"):
        load_config(None, ["optim.warmup_steps=50", "train.steps=10"])


def test_console_commands_and_thin_wrappers():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    names = {"train": "train", "eval": "eval", "generate": "generate", "soup": "soup", "ppl-filter": "ppl_filter",
             "select-data": "select_data", "compare": "compare", "export": "export_hf", "consolidate": "consolidate"}
    assert set(scripts) == {f"minilvlm-{n}" for n in names}
    for command, tool in names.items():
        module, _, attr = scripts[f"minilvlm-{command}"].partition(":")
        assert module == f"minilvlm.cli.{tool}" and callable(getattr(import_module(module), attr))
        code = [line for line in (TOOLS / f"{tool}.py").read_text().split('"""')[-1].splitlines() if line.strip()]
        assert f"from minilvlm.cli.{tool} import main" in code and len(code) <= 4, (tool, code)
