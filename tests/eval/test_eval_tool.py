"""tools/eval.py on a tiny trained run: the trainer's test accuracy reproduced exactly, the JSON and
JSONL outputs, a checkpoint folder as input, clear errors."""
import json

from tests.tools_main import tool_main


def test_eval_reproduces_the_trainer_accuracy(tiny_run, tmp_path, capsys):
    summary = json.loads((tiny_run / "summary.json").read_text())
    out = tmp_path / "results.json"
    assert tool_main("eval")([str(tiny_run), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["accuracy"] == summary["accuracy"]      # floats compared exactly
    assert result["accuracy_count"] == summary["count"]
    assert result["count"] == 16 and result["checkpoint"].endswith("step_000030")
    cats = result["categories"]
    # the demo has no social science, no text contexts, no grades: "-", not 0
    for empty in ("SOC", "TXT", "G1-6", "G7-12"):
        assert cats[empty] == {"accuracy": None, "count": 0}
    assert cats["IMG"]["count"] + cats["NO"]["count"] == 16
    assert cats["NAT"]["count"] + cats["LAN"]["count"] == 16
    predictions = [json.loads(line) for line in (tmp_path / "results.predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 16
    assert sum(p["correct"] for p in predictions) / 16 == result["average"]
    mc = [p for p in predictions if p["question_type"] == "multiple_choice"]
    assert result["unparseable"] == {"count": sum(not p["parseable"] for p in mc), "multiple_choice": len(mc)}
    printed = capsys.readouterr().out
    assert "NAT" in printed and "unparseable" in printed and "      -" in printed


def test_eval_takes_a_checkpoint_folder_and_another_split(tiny_run, tmp_path):
    out = tmp_path / "val.json"
    assert tool_main("eval")([str(tiny_run / "checkpoints" / "step_000010"), "--split", "val", "--out", str(out),
                              "--batch", "7"]) == 0
    result = json.loads(out.read_text())
    assert result["count"] == 12 and result["checkpoint"].endswith("step_000010")


def test_eval_errors(tiny_run, tmp_path, capsys):
    main = tool_main("eval")
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    assert "neither a checkpoint folder" in capsys.readouterr().err
    assert main([str(tiny_run), "--split", "dev", "--out", str(tmp_path / "r.json")]) == 2
    assert "no 'dev' split" in capsys.readouterr().err


def test_eval_on_a_scienceqa_folder(tiny_run, tmp_path):
    """A ScienceQA release (text-only problems here): categories come from its metadata."""
    root = tmp_path / "sqa"
    root.mkdir()
    problems = {str(i): {"question": "What colour is the shape?", "choices": ["red", "blue"], "answer": i % 2,
                         "hint": "A hint." if i < 2 else "", "image": None, "subject": subject, "grade": grade,
                         "split": "test"}
                for i, (subject, grade) in enumerate([("natural science", "grade2"), ("social science", "grade9"),
                                                      ("language science", "grade5")])}
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps({"test": ["0", "1", "2"], "train": []}))
    out = tmp_path / "sqa.json"
    assert tool_main("eval")([str(tiny_run), "--data", str(root), "--out", str(out)]) == 0
    cats = json.loads(out.read_text())["categories"]
    assert {c: v["count"] for c, v in cats.items()} == {"NAT": 1, "SOC": 1, "LAN": 1, "TXT": 2, "IMG": 0, "NO": 1,
                                                        "G1-6": 2, "G7-12": 1}


def test_weights_that_do_not_fit_the_config(tiny_run, tmp_path, capsys):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_run / "checkpoints" / "step_000030", folder)
    tensors = load_file(folder / "model.safetensors")
    tensors["projector.0.bias"] = torch.zeros(5)
    save_file(tensors, folder / "model.safetensors")
    shutil.copy(tiny_run / "tokenizer.json", folder)
    assert tool_main("eval")([str(folder), "--out", str(tmp_path / "r.json")]) == 2
    assert "does not fit the config in state.json" in capsys.readouterr().err
