"""The demo data set: generated shape pictures with questions about them, plus text-only tasks.

    python -m minilvlm.data.demo OUT_DIR [--seed 0] [--train 3000] [--val 300] [--test 300]
                                         [--image-size 32] [--mc-fraction 0.5]
    python -m minilvlm.data.demo OUT_DIR --data-efficiency [--seed 0]

writes OUT_DIR/{train,val,test}.json in LLaVA's conversation format (so it doubles as a format
example) and OUT_DIR/images/<split>/<id>.png; the records name their images relative to the JSON
file's folder (`images/<split>/<id>.png`), the rule of every LLaVA file. Read it back with
`load_demo`, or as any LLaVA file.

Questions ask for colour, shape, count, left/right position and size comparison, as one-word
answers or as ScienceQA-style multiple choice ("The answer is B."). The image is needed: for every
question text the answers cycle through shuffled rounds of that text's options, so per text they
are balanced to within one, and a model that sees only the text cannot beat chance. Text-only
records (arithmetic, word tasks) are mixed in, as LaVIN mixes Alpaca into its batches. Each
record carries evaluator metadata: question_type, task, subject, category, has_image, answer,
choices. Generation is deterministic in the seed and takes a few seconds. `--data-efficiency` writes
the data-efficiency demo instead (a polluted caption set and candidate instruction sets:
minilvlm/data/demo_efficiency.py).
"""
import argparse
import json
import random
import time
from pathlib import Path

from minilvlm.data import demo_efficiency
from minilvlm.data.demo_questions import (  # noqa: F401  (the question sets are part of this module's interface)
    ALL_QUESTIONS, COLOUR_NAMES, COUNTS, MC_TASKS, MMA_QUESTIONS, QUESTIONS, TASK_SETS, TASK_WEIGHTS, WORDS,
    CAPTION_PROMPT, BalancedChooser, build_scene, image_question, picture_caption, text_task, turns)
from minilvlm.data.demo_shapes import draw_scene
from minilvlm.data.records import read_records
from minilvlm.data.scienceqa import LETTERS

SPLIT_SIZES = {"train": 3000, "val": 300, "test": 300}


def make_split(split, count, out_dir, seed, image_size, text_fraction=0.2, mc_fraction=0.5, tasks="shapes"):
    if tasks not in TASK_SETS:
        raise ValueError(f"unknown demo task set {tasks!r}; known: {', '.join(TASK_SETS)}")
    rng = random.Random(f"minilvlm-demo:{seed}:{split}")
    chooser = BalancedChooser(rng)
    folder = out_dir / "images" / split
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        record_id = f"{split}-{i:05d}"
        if tasks == "captions":
            records.append(_caption_record(record_id, split, folder, image_size, rng))
            continue
        if rng.random() < text_fraction:
            task, subject, prompt, reply = text_task(rng)
            records.append({"id": record_id, "conversations": turns(prompt, reply),
                            "question_type": "text_instruction", "task": task, "subject": subject,
                            "category": task, "has_image": False, "answer": reply, "choices": []})
            continue
        if tasks == "shapes":
            task = rng.choices(list(TASK_WEIGHTS), weights=list(TASK_WEIGHTS.values()))[0]
        else:
            task = rng.choice(list(TASK_SETS[tasks]))
        multiple_choice = task in MC_TASKS and rng.random() < mc_fraction
        prompt, reply, answer, choices = image_question(task, rng, chooser, multiple_choice)
        value = choices[LETTERS.index(answer)] if multiple_choice else answer
        draw_scene(build_scene(task, value, image_size, rng), image_size, rng).save(
            folder / f"{record_id}.png", optimize=False)
        records.append({"id": record_id, "image": f"images/{split}/{record_id}.png",
                        "conversations": turns(prompt, reply),
                        "question_type": "multiple_choice" if multiple_choice else "free_form",
                        "task": task, "subject": "vision", "category": task, "has_image": True,
                        "answer": answer, "choices": choices})
    with open(out_dir / f"{split}.json", "w") as f:
        json.dump(records, f, indent=1)
    return records


def _caption_record(record_id, split, folder, image_size, rng):
    """A captioned picture (tasks="captions"): one to four shapes, named left to right or counted."""
    shapes = demo_efficiency.caption_scene(rng, image_size)
    draw_scene(shapes, image_size, rng).save(folder / f"{record_id}.png", optimize=False)
    caption = picture_caption(shapes)
    return {"id": record_id, "image": f"images/{split}/{record_id}.png",
            "conversations": turns(f"<image>\n{CAPTION_PROMPT}", caption), "question_type": "caption",
            "task": "caption", "subject": "vision", "category": "caption", "has_image": True, "answer": caption,
            "choices": []}


def generate(out_dir, seed=0, sizes=None, image_size=32, mc_fraction=0.5, tasks="shapes"):
    """Write the demo data set to out_dir; returns {split: number of records}. tasks="mma" asks
    the MMA_QUESTIONS instead of QUESTIONS (text-only records are mixed in either way); tasks="captions"
    captions pictures instead (no text-only records)."""
    out_dir = Path(out_dir)
    sizes = dict(SPLIT_SIZES if sizes is None else sizes)
    return {split: len(make_split(split, n, out_dir, seed, image_size, mc_fraction=mc_fraction, tasks=tasks))
            for split, n in sizes.items()}


def load_demo(out_dir, split, on_error="raise", skips=None):
    """The records of one split of a generated demo data set (image paths are relative to the JSON
    file's folder, as in every LLaVA file)."""
    return read_records(Path(out_dir) / f"{split}.json", "llava", on_error=on_error, skips=skips)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minilvlm.data.demo", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--mc-fraction", type=float, default=0.5,
                        help="share of the colour/shape/count/position/comparison questions asked as multiple choice")
    parser.add_argument("--tasks", choices=sorted(TASK_SETS), default="shapes", help="question set")
    parser.add_argument("--data-efficiency", action="store_true",
                        help="write the data-efficiency demo (pretrain.json, sets/, val.json, test.json, tokenizer.json)")
    for split, n in SPLIT_SIZES.items():
        parser.add_argument(f"--{split}", type=int, default=n, help=f"records in {split} (default {n})")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.data_efficiency:
        files = demo_efficiency.generate(args.out_dir, args.seed, image_size=args.image_size)
        print(f"wrote {', '.join(f'{name} ({len(r)})' for name, r in files.items())} and tokenizer.json to "
              f"{args.out_dir} in {time.perf_counter() - start:.1f} s")
        return
    counts = generate(args.out_dir, args.seed, {s: getattr(args, s) for s in SPLIT_SIZES}, args.image_size,
                      args.mc_fraction, args.tasks)
    print(f"wrote {counts} to {args.out_dir} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
