"""The data-efficiency demo: a polluted caption set to filter and candidate instruction sets to select
from, generated from the demo's shapes (docs/data-efficiency.md).

    python -m minilvlm.data.demo OUT_DIR --data-efficiency [--seed 0]

writes, all in LLaVA's format with images relative to each file's folder:
- `pretrain.json`: caption records ("<image>" -> "red circle and blue square", shapes named left to
  right), of which `POLLUTION` are polluted: half carry the caption of another picture (a mismatched
  pair), half a string of unrelated words (junk text). Each record's `polluted` field says which, so
  a filter's catch can be counted; the trainer ignores it. `pretrain_val.json` / `pretrain_test.json`
  are clean held-out captions.
- `sets/<name>.json` (pictures in `sets/images/<name>/`): the candidate instruction sets, named in CANDIDATES: one per task family the
  held-out splits ask (colour, shape, count, position, text), and three that should not be worth their
  cost: `noise` (questions of those families with the replies shuffled over the whole set),
  `colour_again` (a near-duplicate of `colour`: the same pictures and answers, the question reworded)
  and `same_colour` (a task the held-out splits never ask).
- `val.json` / `test.json`: held-out questions of the five families, as the demo asks them.
- `tokenizer.json`: a word-level tokenizer over every text above, so that runs on any subset share
  token ids (a base run and its fine-tunes, the members of a soup).
"""
import json
import random
from pathlib import Path

from minilvlm.data.demo_questions import (
    ALL_QUESTIONS,
    MC_TASKS,
    TASK_WEIGHTS,
    WORDS,
    BalancedChooser,
    build_scene,
    image_question,
    text_task,
    turns,
)
from minilvlm.data.demo_shapes import COLOURS, SHAPES, Shape, draw_scene, place
from minilvlm.data.scienceqa import LETTERS
from minilvlm.data.word_tokenizer import build_word_tokenizer

POLLUTION = 0.3
USEFUL = ("colour", "shape", "count", "position", "text")
CANDIDATES = USEFUL + ("noise", "colour_again", "same_colour")
HELD_OUT_TASKS = ("colour", "shape", "count", "position")
# The near-duplicate's question: the colour question in other words (all of them words the demo uses).
REWORDED = {"colour": "What is the colour of the shape?"}
DEFAULT_SIZES = {"pretrain": 4000, "pretrain_val": 200, "pretrain_test": 400, "set": 800, "val": 300,
                 "test": 600}


def caption_of(shapes):
    """The shapes named left to right: "red circle" or "red circle and blue square"; scenes of three or
    more small shapes are counted instead ("three shapes")."""
    if len(shapes) > 2:
        return f"{('one', 'two', 'three', 'four')[len(shapes) - 1]} shapes"
    return " and ".join(f"{s.colour} {s.kind}" for s in sorted(shapes, key=lambda s: s.x))


def caption_scene(rng, size):
    """A scene of one or two shapes, or of three or four small ones."""
    kind, colour = lambda: rng.choice(SHAPES), lambda: rng.choice(tuple(COLOURS))   # noqa: E731
    n = rng.choice((1, 1, 2, 2, 2, 3, 4))
    radii = ([rng.uniform(0.2 * size, 0.34 * size)] if n == 1 else
             [rng.uniform(0.12 * size, 0.18 * size) for _ in range(2)] if n == 2 else
             [rng.uniform(0.08 * size, 0.12 * size) for _ in range(n)])
    centres = place(rng, radii, size)
    return [Shape(kind(), colour(), x, y, r) for r, (x, y) in zip(radii, centres)]


def _junk(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5)))


def caption_records(name, count, out_dir, rng, size, pollution):
    folder = out_dir / "images" / name
    folder.mkdir(parents=True, exist_ok=True)
    scenes = [caption_scene(rng, size) for _ in range(count)]
    captions = [caption_of(s) for s in scenes]
    records = []
    for i, scene in enumerate(scenes):
        record_id = f"{name}-{i:05d}"
        draw_scene(scene, size, rng).save(folder / f"{record_id}.png", optimize=False)
        caption, polluted = captions[i], None
        if rng.random() < pollution:
            polluted = rng.choice(("mismatched", "junk"))
            if polluted == "mismatched":
                caption = rng.choice([c for c in captions if c != captions[i]])
            else:
                caption = _junk(rng)
        record = {"id": record_id, "image": f"images/{name}/{record_id}.png", "conversations": turns("<image>", caption),
                  "task": "caption", "has_image": True}
        if polluted:
            record["polluted"] = polluted
        records.append(record)
    return records


def question_records(name, tasks, count, out_dir, rng, size, text_fraction=0.0, mc_fraction=0.5, reword=None):
    """Demo questions of `tasks` (chosen by TASK_WEIGHTS), with `text_fraction` text-only records; the
    pictures go to out_dir/images/name (out_dir: the folder of the file the records go into)."""
    chooser = BalancedChooser(rng)
    folder = out_dir / "images" / name
    if tasks:
        folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        record_id = f"{name}-{i:05d}"
        if not tasks or rng.random() < text_fraction:
            task, subject, prompt, reply = text_task(rng)
            records.append({"id": record_id, "conversations": turns(prompt, reply),
                            "question_type": "text_instruction", "task": task, "subject": subject,
                            "category": task, "has_image": False, "answer": reply, "choices": []})
            continue
        task = rng.choices(tasks, weights=[TASK_WEIGHTS[t] for t in tasks])[0]
        multiple_choice = task in MC_TASKS and rng.random() < mc_fraction
        prompt, reply, answer, choices = image_question(task, rng, chooser, multiple_choice)
        if reword and task in reword:
            prompt = prompt.replace(ALL_QUESTIONS[task][0], reword[task])
        value = choices[LETTERS.index(answer)] if multiple_choice else answer
        draw_scene(build_scene(task, value, size, rng), size, rng).save(folder / f"{record_id}.png", optimize=False)
        records.append({"id": record_id, "image": f"images/{name}/{record_id}.png", "conversations": turns(prompt, reply),
                        "question_type": "multiple_choice" if multiple_choice else "free_form", "task": task,
                        "subject": "vision", "category": task, "has_image": True, "answer": answer,
                        "choices": choices})
    return records


def shuffled_replies(records, rng):
    """The records with their replies (and answer metadata) permuted over the whole set."""
    replies = [(r["conversations"][1]["value"], r["answer"]) for r in records]
    rng.shuffle(replies)
    out = []
    for record, (reply, answer) in zip(records, replies):
        record = dict(record, conversations=turns(record["conversations"][0]["value"], reply), answer=answer)
        out.append(record)
    return out


def generate(out_dir, seed=0, sizes=None, image_size=32, pollution=POLLUTION):
    """Write the data-efficiency demo into out_dir; returns {file name: records}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    rng = lambda part: random.Random(f"minilvlm-data-efficiency:{seed}:{part}")   # noqa: E731
    n = sizes["set"]
    files = {
        "pretrain.json": caption_records("pretrain", sizes["pretrain"], out_dir, rng("pretrain"), image_size, pollution),
        "pretrain_val.json": caption_records("pretrain_val", sizes["pretrain_val"], out_dir, rng("pretrain_val"),
                                             image_size, 0.0),
        "pretrain_test.json": caption_records("pretrain_test", sizes["pretrain_test"], out_dir, rng("pretrain_test"),
                                              image_size, 0.0),
        "val.json": question_records("val", list(HELD_OUT_TASKS), sizes["val"], out_dir, rng("val"), image_size, 0.2),
        "test.json": question_records("test", list(HELD_OUT_TASKS), sizes["test"], out_dir, rng("test"), image_size,
                                      0.2),
    }
    sets = out_dir / "sets"   # the sets' pictures under sets/images/, relative to their files
    for task in HELD_OUT_TASKS:
        files[f"sets/{task}.json"] = question_records(task, [task], n, sets, rng(task), image_size)
    files["sets/text.json"] = question_records("text", [], n, sets, rng("text"), image_size)
    noise = question_records("noise", list(HELD_OUT_TASKS), n, sets, rng("noise"), image_size, 0.2)
    files["sets/noise.json"] = shuffled_replies(noise, rng("noise-shuffle"))
    # The same pictures and answers as sets/colour.json (the same generator state), the question reworded.
    again = question_records("colour_again", ["colour"], n, sets, rng("colour"), image_size, reword=REWORDED)
    files["sets/colour_again.json"] = again
    files["sets/same_colour.json"] = question_records("same_colour", ["same_colour"], n, sets, rng("same_colour"),
                                                      image_size)
    for name, records in files.items():
        with open(out_dir / name, "w") as f:
            json.dump(records, f, indent=1)
    texts = [t["value"] for records in files.values() for r in records for t in r["conversations"]]
    build_word_tokenizer(texts, out_dir)
    return files
