"""ScienceQA: problems.json + pid_splits.json + images/<split>/<pid>/<image>, as released.

Each problem becomes a one-question conversation in LaVIN's question-context-options layout:

    <image>                      (only when the problem has an image)
    Context: <hint, or N/A>      (with_lecture=True appends the lecture)
    Question: <question>
    Options: (A) ... (B) ...

and the reply "The answer is X." The metadata that ScienceQA's accuracy breakdown needs
(subject, grade, topic, category, skill, context modality, answer letter, choices) goes into
`Record.meta`.

`python -m minilvlm.data.scienceqa ROOT --split train --out ROOT/train_llava.json` writes a split as
a LLaVA-format file (image paths relative to its folder), which configs/lavin_llama7b_sqa.toml reads;
the trainer also reads the release folder itself (data.format = "scienceqa" or "auto").
"""
import argparse
import json
import os
import sys
from pathlib import Path

from minilvlm.data.errors import DataError, SkipCounter, check_on_error, handle
from minilvlm.data.images import resolve_image_path
from minilvlm.data.jsonfile import iter_json, read_text
from minilvlm.data.records import IMAGE_TAG, Record, Turn
from minilvlm.io import atomic_write_text

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
META_FIELDS = ("subject", "grade", "topic", "category", "skill")


def format_options(choices):
    return " ".join(f"({LETTERS[i]}) {choice}" for i, choice in enumerate(choices))


def mc_prompt(question, choices, context="", has_image=False):
    """The prompt of a multiple-choice problem (also used by the demo data set)."""
    head = f"{IMAGE_TAG}\n" if has_image else ""
    return (f"{head}Context: {context.strip() or 'N/A'}\nQuestion: {question.strip()}\n"
            f"Options: {format_options(choices)}")


def mc_answer(index):
    return f"The answer is {LETTERS[index]}."


def _field(problem, key, kinds, optional=False):
    value = problem.get(key)
    if value is None:
        if optional:
            return None
        raise DataError(f"missing field {key!r}", reason="missing_field")
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise DataError(f"field {key!r} has type {type(value).__name__}", reason="wrong_type")
    return value


def parse_problem(pid, problem, split, image_dir, with_lecture=False):
    if not isinstance(problem, dict):
        raise DataError(f"a problem must be a JSON object, got {type(problem).__name__}",
                        reason="wrong_type")
    question = _field(problem, "question", str)
    choices = _field(problem, "choices", list)
    if not 2 <= len(choices) <= len(LETTERS) or not all(isinstance(c, str) for c in choices):
        raise DataError(f"'choices' must be 2 to {len(LETTERS)} strings", reason="wrong_type")
    answer = _field(problem, "answer", int)
    if not 0 <= answer < len(choices):
        raise DataError(f"answer index {answer} is outside the {len(choices)} choices",
                        reason="bad_answer")
    hint = _field(problem, "hint", str, optional=True) or ""
    context = hint
    if with_lecture:
        context = f"{hint}\n{_field(problem, 'lecture', str, optional=True) or ''}".strip()
    image = _field(problem, "image", str, optional=True)
    images = []
    if image:
        folder = _field(problem, "split", str, optional=True) or split
        images = [resolve_image_path(image_dir, f"{folder}/{pid}/{image}")]
    meta = {k: _field(problem, k, str, optional=True) or "" for k in META_FIELDS}
    meta.update(question_type="multiple_choice", choices=list(choices), answer=LETTERS[answer],
                has_image=bool(images),
                context_modality="IMG" if images else ("TXT" if hint.strip() else "NO"))
    prompt = mc_prompt(question, choices, context, has_image=bool(images))
    return Record(str(pid), [Turn("user", prompt), Turn("assistant", mc_answer(answer))], images,
                  meta=meta)


def read_scienceqa(root, split, image_dir=None, with_lecture=False, on_error="raise", skips=None):
    """The records of one split ("train", "val", "test", "minival", ...) of a ScienceQA folder."""
    check_on_error(on_error)
    root = Path(root)
    problems_path, splits_path = root / "problems.json", root / "pid_splits.json"
    image_dir = Path(image_dir) if image_dir is not None else root / "images"
    skips = skips if skips is not None else SkipCounter()
    splits = {key: value for _, key, value in iter_json(splits_path, read_text(splits_path))}
    if split not in splits or not isinstance(splits[split], list):
        raise DataError(f"no list of problem ids for split {split!r} (found {sorted(splits)})",
                        reason="missing_field", file=splits_path)
    wanted = {str(pid) for pid in splits[split]}
    records, found = [], set()
    for line, pid, problem in iter_json(problems_path):
        if pid not in wanted:
            continue
        found.add(pid)
        try:
            if isinstance(problem, DataError):
                raise problem
            record = parse_problem(pid, problem, split, image_dir, with_lecture)
        except DataError as err:
            handle(err.at(file=problems_path, line=line, record_id=pid), on_error, skips)
            continue
        record.source, record.line = str(problems_path), line
        records.append(record)
    for pid in sorted(wanted - found):
        handle(DataError(f"problem {pid!r} is listed in split {split!r} but not in problems.json",
                         reason="missing_problem", file=splits_path, record_id=pid), on_error, skips)
    return records


def to_llava(record, out_dir):
    """A ScienceQA record as a LLaVA-format object whose image path is relative to out_dir (the
    folder of the file it goes into); its metadata rides along as extra keys."""
    obj = {"id": record.id, "conversations": [{"from": "human" if t.role == "user" else "gpt", "value": t.text}
                                              for t in record.turns]}
    if record.images:
        image = Path(os.path.abspath(record.images[0]))
        if not image.is_relative_to(Path(os.path.abspath(out_dir))):
            raise DataError(f"the image {image} is not inside {out_dir}, the output file's folder, so the LLaVA file "
                            "could not name it; write the output inside the release folder (e.g. ROOT/train_llava.json)",
                            reason="path_outside_root", record_id=record.id)
        obj["image"] = image.relative_to(Path(os.path.abspath(out_dir))).as_posix()
    obj.update({k: v for k, v in record.meta.items() if k != "has_image"})
    return obj


def write_llava(root, split, out, with_lecture=False, on_error="raise"):
    """Write one split of a ScienceQA release as a LLaVA-format JSON file (what
    configs/lavin_llama7b_sqa.toml reads); returns (records written, SkipCounter)."""
    out = Path(out)
    skips = SkipCounter()
    records = read_scienceqa(root, split, with_lecture=with_lecture, on_error=on_error, skips=skips)
    objects = [to_llava(r, out.parent) for r in records]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(objects, ensure_ascii=False, indent=1) + "\n", out)
    return len(objects), skips


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minilvlm.data.scienceqa",
                                     description="Write a split of a ScienceQA release (LaVIN's layout: problems.json, "
                                                 "pid_splits.json, images/<split>/<pid>/) as a LLaVA-format file.")
    parser.add_argument("root", help="the release folder")
    parser.add_argument("--split", default="train", help="train, val, test, minival, ... (default train)")
    parser.add_argument("--out", required=True, help="the LLaVA .json to write (inside the release folder)")
    parser.add_argument("--with-lecture", action="store_true", help="append the lecture to the context")
    parser.add_argument("--skip-bad", action="store_true", help="count and leave out bad problems instead of stopping")
    ns = parser.parse_args(argv)
    try:
        written, skips = write_llava(ns.root, ns.split, ns.out, ns.with_lecture, "skip" if ns.skip_bad else "raise")
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {written} {ns.split} problems to {ns.out}; {skips.report()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
