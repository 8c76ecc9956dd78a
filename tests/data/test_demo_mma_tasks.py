"""The demo's `tasks="mma"` question set: new question types whose scenes make the answer true,
worded only with words of the base question set (a frozen LM cannot learn new words), balanced
answers, and the default set left exactly as it was."""
import json
import random
import re
from collections import Counter

import pytest

from minilvlm.data.demo import MMA_QUESTIONS, QUESTIONS, build_scene, generate, load_demo, make_split
from minilvlm.data.demo_shapes import SHAPES


def words(text):
    return set(re.findall(r"\w+|[^\w\s]+", text))


def test_new_questions_use_only_the_base_questions_words():
    base = set().union(*(words(q) for q, _ in QUESTIONS.values()))
    for question, _ in MMA_QUESTIONS.values():
        assert words(question) <= base, question
    assert not set(MMA_QUESTIONS) & set(QUESTIONS)


@pytest.mark.parametrize("task", sorted(MMA_QUESTIONS))
def test_scenes_make_the_answer_true(task):
    rng = random.Random(task)
    size = 64
    for trial in range(60):
        options = MMA_QUESTIONS[task][1]
        answer = options[trial % len(options)]
        shapes = build_scene(task, answer, size, rng)
        if task == "shape_left":
            assert min(shapes, key=lambda s: s.x).kind == answer and len({s.kind for s in shapes}) == 2
            assert sum(s.x < size / 2 for s in shapes) == 1
        elif task == "larger_shape":
            assert max(shapes, key=lambda s: s.r).kind == answer and len({s.kind for s in shapes}) == 2
        else:
            assert sum(s.x < size / 2 for s in shapes) == int(answer)
            assert all(s.kind in SHAPES for s in shapes)


def test_mma_split_mixes_new_types_with_text_only(tmp_path):
    generate(tmp_path, seed=3, sizes={"train": 300, "test": 20}, tasks="mma")
    records = load_demo(tmp_path, "train")
    tasks = Counter(r.meta["task"] for r in records if r.meta["has_image"])
    assert set(tasks) == set(MMA_QUESTIONS)
    text_only = [r for r in records if not r.meta["has_image"]]
    assert 0.1 < len(text_only) / len(records) < 0.3 and all(not r.images for r in text_only)
    for task in MMA_QUESTIONS:   # answers balanced per question (to within one)
        counts = Counter(r.meta["answer"] for r in records if r.meta.get("task") == task)
        assert max(counts.values()) - min(counts.values()) <= 1, (task, counts)
    with pytest.raises(ValueError, match="unknown demo task set 'nope'"):
        make_split("x", 1, tmp_path, 0, 64, tasks="nope")


def test_default_task_set_is_unchanged(tmp_path):
    generate(tmp_path / "a", seed=5, sizes={"train": 30})
    generate(tmp_path / "b", seed=5, sizes={"train": 30}, tasks="shapes")
    a = json.loads((tmp_path / "a" / "train.json").read_text())
    assert a == json.loads((tmp_path / "b" / "train.json").read_text())
    assert {r["task"] for r in a if r["has_image"]} <= set(QUESTIONS)


def test_caption_set_names_each_picture_in_the_demo_words(tmp_path):
    """tasks="captions" (LLaVA's stage-1 data in configs/compare/llava_stages.toml): every record is a
    captioned picture, the caption true to the scene and made of words the demo questions and answers use
    (the stages share one word list), so a tokenizer built from the default set covers it."""
    from minilvlm.data.demo import CAPTION_PROMPT
    from minilvlm.data.demo_efficiency import caption_scene
    from minilvlm.data.demo_questions import picture_caption
    from minilvlm.data.demo_shapes import Shape

    generate(tmp_path / "c", seed=1, sizes={"train": 80}, tasks="captions")
    generate(tmp_path / "s", seed=1, sizes={"train": 400})
    captions = json.loads((tmp_path / "c" / "train.json").read_text())
    assert all(r["has_image"] and r["task"] == "caption" and r["question_type"] == "caption" for r in captions)
    vocabulary = set().union(*(words(t["value"]) for r in json.loads((tmp_path / "s" / "train.json").read_text())
                               for t in r["conversations"]))
    for record in captions:
        prompt, reply = (t["value"] for t in record["conversations"])
        assert prompt == f"<image>\n{CAPTION_PROMPT}" and reply == record["answer"]
        assert words(reply) <= vocabulary and words(CAPTION_PROMPT) <= vocabulary, reply
        assert (tmp_path / "c" / record["image"]).is_file()
    replies = Counter(r["answer"] for r in captions)
    assert len(replies) > 10 and any(" . " in a for a in replies) and any(a.endswith("shapes") for a in replies)
    # The caption is true to the scene: left to right, or counted from three shapes on.
    two = [Shape("circle", "red", 20, 16, 5), Shape("square", "blue", 8, 16, 5)]
    assert picture_caption(two) == "blue square . red circle"
    assert picture_caption(two + [Shape("star", "green", 28, 5, 3)]) == "3 shapes"
    rng = random.Random(0)
    assert all(len(s) in (1, 2, 3, 4) for s in (caption_scene(rng, 32) for _ in range(50)))
