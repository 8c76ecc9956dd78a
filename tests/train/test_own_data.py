"""Bring your own data (issue 16): a LLaVA set made here with pictures of its own and nothing but
`image` and `conversations` trains from a from-scratch tower and is scored by the trainer exactly as
by hand; an Alpaca file and a ScienceQA release folder train as they are (data.format = "auto"), and
so does a mixture of them with the demo; the converter writes the file the LaVIN config reads."""
import json
import random

from PIL import Image

from minilvlm.data.formats import read_data
from minilvlm.data.scienceqa import main as scienceqa_main
from minilvlm.data.scienceqa import read_scienceqa
from minilvlm.eval.score import normalize
from tests.tiny_run import TINY_MODEL
from tests.tools_main import tool_main

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 230), "yellow": (240, 220, 20)}
SHORT = ["train.global_batch=16", "train.micro_batch=16", "train.log_every=5", "train.eval_every=0",
         "train.ckpt_every=0", "eval.max_new_tokens=4", "eval.samples=0", "train.threads=2", "optim.warmup_steps=2"]


def own_set(folder, n, seed, name, suffix=".json"):
    """n pictures (a colour field with a grey square at a random place) and a question each, with
    only the keys image and conversations; images under folder/pics/, named relative to the file. A
    .json array or, with suffix .jsonl, one record per line."""
    rng = random.Random(seed)
    (folder / "pics").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        colour = rng.choice(sorted(COLOURS))
        img = Image.new("RGB", (32, 32), COLOURS[colour])
        x, y = rng.randrange(0, 24), rng.randrange(0, 24)
        img.paste((128, 128, 128), (x, y, x + 8, y + 8))
        img.save(folder / "pics" / f"{name}{i}.png")
        rows.append({"image": f"pics/{name}{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the picture?"}, {"from": "gpt", "value": colour}]})
    path = folder / f"{name}{suffix}"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) if suffix == ".jsonl" else json.dumps(rows, indent=1))
    return path


def train(run_dir, *overrides):
    return tool_main("train")([*TINY_MODEL, *SHORT, f"train.run_dir={json.dumps(str(run_dir))}", *overrides])


def test_own_llava_data_trains_and_the_trainer_scores_it_as_by_hand(tmp_path):
    data = tmp_path / "mine"
    train_file, val_file = own_set(data, 96, 0, "train"), own_set(data, 24, 1, "val", ".jsonl")
    run = tmp_path / "run"
    assert train(run, f"data.dataset={json.dumps(str(train_file))}", f"data.eval_file={json.dumps(str(val_file))}",
                 "train.steps=40", "optim.lr=3e-3", "train.vision_pretrain_steps=40",
                 "train.vision_pretrain_batch=16") == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["vision_pretrain"]["labelled"] == 96   # labels from the question and the reply
    expected = {f"val.jsonl:{i + 1}": json.loads(line)["conversations"][-1]["value"]   # default ids: file:line
                for i, line in enumerate(val_file.read_text().splitlines())}
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 24 and {s["id"] for s in samples} == set(expected)
    by_hand = sum(normalize(s["reply"]) == normalize(expected[s["id"]]) for s in samples) / 24
    assert summary["accuracy"]["free_form"] == by_hand and summary["count"]["free_form"] == 24
    assert by_hand >= 0.5, by_hand   # colour, one glance at the pixels: well above the 25% of chance
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/loss" in r for r in rows) and summary["heldout_loss"] > 0


def scienceqa_release(root, n=12):
    """A ScienceQA release in its layout: problems.json, pid_splits.json, images/<split>/<pid>/image.png."""
    problems, splits = {}, {"train": [], "val": [], "test": []}
    for i in range(n):
        split = ("train", "train", "val", "test")[i % 4]
        pid = str(100 + i)
        problem = {"question": "Which colour is shown?", "choices": ["red", "blue"], "answer": i % 2, "hint": "",
                   "image": "image.png" if i % 3 else None, "subject": "natural science", "grade": "grade3",
                   "topic": "colour", "category": "Colours", "skill": "look", "split": split, "lecture": "L."}
        if problem["image"]:
            (root / "images" / split / pid).mkdir(parents=True)
            Image.new("RGB", (40, 30), COLOURS[problem["choices"][i % 2]]).save(root / "images" / split / pid / "image.png")
        problems[pid] = problem
        splits[split].append(pid)
    root.mkdir(parents=True, exist_ok=True)
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps(splits))
    return root


def alpaca_file(path, n=24):
    rows = [{"instruction": f"Add {i} and {i + 1}.", "input": "", "output": str(2 * i + 1)} for i in range(n)]
    path.write_text(json.dumps(rows))
    return path


def test_alpaca_scienceqa_and_a_mixture_with_the_demo_train_as_they_are(tmp_path):
    sqa, alpaca = scienceqa_release(tmp_path / "sqa"), alpaca_file(tmp_path / "alpaca.json")
    assert train(tmp_path / "a", f"data.dataset={json.dumps(str(alpaca))}", "train.steps=2") == 0
    assert train(tmp_path / "s", f"data.dataset={json.dumps(str(sqa))}", "train.steps=2",
                 "train.vision_pretrain_steps=2", "train.vision_pretrain_batch=4") == 0
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["count"] == {"multiple_choice": 3, "task/?": 3}   # ScienceQA's own test split
    mixture = (f"data.mixture=[{{path = {json.dumps(str(alpaca))}, weight = 1}}, "
               f"{{path = {json.dumps(str(sqa))}, weight = 1}}, {{path = \"demo\", weight = 2}}]")
    assert train(tmp_path / "m", mixture, "data.demo_sizes={train = 32, val = 8, test = 8}", "train.steps=2",
                 "train.vision_pretrain_steps=0") == 0
    out = (tmp_path / "m" / "metrics.jsonl").read_text()
    assert '"step": 2' in out
    summary = json.loads((tmp_path / "m" / "summary.json").read_text())
    # held out: the first entry that has held-out splits, here ScienceQA's test split (3 problems)
    assert summary["count"]["multiple_choice"] == 3 and summary["data"]["data/samples_seen"] == 32


def test_on_error_skip_counts_by_reason_in_metrics_and_summary(tmp_path, capsys):
    """Skips counted by reason in metrics.jsonl, summary.json and the printed report; with no held-out
    records the final line names only the files that were written (no samples.jsonl)."""
    data = tmp_path / "mine"
    train_file = own_set(data, 40, 0, "train")
    rows = json.loads(train_file.read_text())
    rows[3]["image"], rows[5]["conversations"] = "pics/none.png", "broken"
    train_file.write_text(json.dumps(rows))
    run = tmp_path / "run"
    assert train(run, f"data.dataset={json.dumps(str(train_file))}", "data.on_error=skip", "train.steps=2",
                 "train.vision_pretrain_steps=0") == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data"]["data/skipped/missing_image"] == 1 and summary["data"]["data/skipped/wrong_type"] == 1
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["data/skipped"] == 2
    printed = capsys.readouterr()
    printed = printed.out + printed.err
    assert "missing_image" in printed and "wrong_type" in printed and "no final evaluation" in printed
    done = [line for line in printed.splitlines() if line.startswith("done in")]
    assert len(done) == 1 and "samples" not in done[0] and not (run / "samples.jsonl").exists()


def test_the_scienceqa_converter_writes_what_the_lavin_config_reads(tmp_path, capsys):
    root = scienceqa_release(tmp_path / "scienceqa")
    out = root / "train_llava.json"
    assert scienceqa_main([str(root), "--split", "train", "--out", str(out)]) == 0
    converted, fmt = read_data(out)
    original = read_scienceqa(root, "train")
    assert fmt == "llava" and [r.id for r in converted] == [r.id for r in original]
    assert [r.turns for r in converted] == [r.turns for r in original]
    assert [r.images for r in converted] == [r.images for r in original]
    assert all(c.meta["answer"] == o.meta["answer"] and c.meta["subject"] == o.meta["subject"]
               for c, o in zip(converted, original))
    assert scienceqa_main([str(root), "--split", "train", "--out", str(tmp_path / "other" / "x.json")]) == 2
    assert "not inside" in capsys.readouterr().err
