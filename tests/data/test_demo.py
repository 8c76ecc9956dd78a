"""The demo data set: deterministic, well-formed, answerable from the image and not from the text."""
import hashlib
import json
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image

from minilvlm.data.demo import MC_TASKS, QUESTIONS, generate, load_demo, main
from minilvlm.data.demo_shapes import COLOURS
from minilvlm.data.scienceqa import LETTERS

META = ("question_type", "task", "subject", "category", "has_image", "answer", "choices")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    generate(root, seed=11, sizes={"train": 1200, "val": 50, "test": 500})
    return root


def digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return h.hexdigest()


def test_deterministic_in_the_seed(tmp_path):
    sizes = {"train": 40, "val": 10, "test": 10}
    generate(tmp_path / "a", seed=1, sizes=sizes)
    generate(tmp_path / "b", seed=1, sizes=sizes)
    generate(tmp_path / "c", seed=2, sizes=sizes)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")


def test_records_are_llava_with_evaluator_metadata(demo):
    for split, n in (("train", 1200), ("val", 50), ("test", 500)):
        records = load_demo(demo, split)
        assert len(records) == n and len({r.id for r in records}) == n
        for r in records:
            assert all(key in r.meta for key in META)
            assert r.meta["has_image"] == r.has_image == bool(r.images)
            assert [t.role for t in r.turns] == ["user", "assistant"]
    train = load_demo(demo, "train")
    kinds = Counter((r.meta["question_type"], r.meta["task"]) for r in train)
    assert {task for (_, task) in kinds} >= set(QUESTIONS)
    assert {qt for (qt, _) in kinds} == {"free_form", "multiple_choice", "text_instruction"}
    assert 0.1 < sum(not r.has_image for r in train) / len(train) < 0.3
    mc = next(r for r in train if r.meta["question_type"] == "multiple_choice")
    assert "\nOptions: (A) " in mc.turns[0].text and mc.turns[1].text == f"The answer is {mc.meta['answer']}."


def test_multiple_choice_options_keep_their_order(demo):
    mc = [r for r in load_demo(demo, "train") if r.meta["question_type"] == "multiple_choice"]
    assert len(mc) > 100
    for r in mc:
        options = QUESTIONS[r.meta["task"]][1]
        positions = [options.index(c) for c in r.meta["choices"]]
        assert len(positions) >= 2 and positions == sorted(set(positions)), r.id
        assert f"Options: (A) {r.meta['choices'][0]} (B) {r.meta['choices'][1]}" in r.turns[0].text
    assert len({len(r.meta["choices"]) for r in mc}) == 3   # 2, 3 or 4 options


def test_mc_fraction_sets_the_share_of_multiple_choice(tmp_path):
    shares = []
    for fraction in (0.0, 0.6):
        generate(tmp_path / str(fraction), seed=2, sizes={"train": 300}, image_size=32, mc_fraction=fraction)
        records = [r for r in load_demo(tmp_path / str(fraction), "train") if r.meta["task"] in MC_TASKS]
        shares.append(sum(r.meta["question_type"] == "multiple_choice" for r in records) / len(records))
    assert shares[0] == 0 and 0.45 < shares[1] < 0.75, shares


def answers_by_text(records):
    by_text = defaultdict(Counter)
    for r in records:
        if r.has_image:
            by_text[r.turns[0].text][r.meta["answer"]] += 1
    return by_text


def options(record):
    if record.meta["question_type"] == "multiple_choice":
        return list(LETTERS[:len(record.meta["choices"])])
    return record.meta["choices"]


@pytest.mark.parametrize("split", ["train", "test"])
def test_answers_are_balanced_per_question_text(demo, split):
    records = [r for r in load_demo(demo, split) if r.has_image]
    option_sets = {r.turns[0].text: options(r) for r in records}
    for text, counts in answers_by_text(records).items():
        full = [counts.get(o, 0) for o in option_sets[text]]
        assert max(full) - min(full) <= 1, (text, counts)


def test_text_only_guessing_is_at_chance(demo):
    train, test = load_demo(demo, "train"), [r for r in load_demo(demo, "test") if r.has_image]
    majority = {text: counts.most_common(1)[0][0] for text, counts in answers_by_text(train).items()}
    right = sum(majority.get(r.turns[0].text) == r.meta["answer"] for r in test)
    chance = sum(1 / len(options(r)) for r in test)
    assert right / len(test) < chance / len(test) + 0.06, (right / len(test), chance / len(test))


def colour_masks(path):
    pixels = np.asarray(Image.open(path).convert("RGB"), float)
    names = list(COLOURS)
    refs = np.array([COLOURS[n] for n in names], float)
    dist = np.linalg.norm(pixels[:, :, None, :] - refs, axis=-1)
    nearest = dist.argmin(-1)
    return {n: (nearest == i) & (dist.min(-1) < 45) for i, n in enumerate(names)}


def test_the_image_holds_the_answer(demo):
    checked = Counter()
    for r in load_demo(demo, "train")[:500]:
        task, qt = r.meta["task"], r.meta["question_type"]
        if not r.has_image or task not in ("colour", "position", "comparison", "same_colour"):
            continue
        answer = r.meta["answer"]
        if qt == "multiple_choice":
            answer = r.meta["choices"][LETTERS.index(answer)]
        masks = {c: m for c, m in colour_masks(r.images[0]).items() if m.sum() > 3}
        if task == "colour":
            assert list(masks) == [answer], r.id
        elif task == "same_colour":
            assert (len(masks) == 1) == (answer == "yes"), r.id
        else:
            (other,) = set(masks) - {answer}
            if task == "position":
                cols = {c: np.nonzero(m)[1].mean() for c, m in masks.items()}
                assert cols[answer] < cols[other], r.id
            else:
                assert masks[answer].sum() > masks[other].sum(), r.id
        checked[task] += 1
    assert min(checked.values()) > 10


def test_cli(tmp_path, capsys):
    main([str(tmp_path / "out"), "--train", "5", "--val", "2", "--test", "2", "--image-size", "32"])
    assert "wrote {'train': 5, 'val': 2, 'test': 2}" in capsys.readouterr().out
    records = json.loads((tmp_path / "out" / "val.json").read_text())
    assert len(records) == 2
    with_image = [r for r in load_demo(tmp_path / "out", "train") if r.has_image]
    assert all(Image.open(r.images[0]).size == (32, 32) for r in with_image)
