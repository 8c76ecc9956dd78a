"""A run's data, as its config describes it: the records of each split (the generated demo set, a
LLaVA or Alpaca file, a ScienceQA folder, or a weighted mixture of them), prepared by the recipe, and
the tokenizer (a configured one, or a word-level one built from the training texts). Either way the
tokenizer's files are kept in the run folder and read from there, so the run folder is
self-contained (minilvlm/eval/load.py reads them back).

Held-out splits: `data.eval_file` when set (its records serve as val and test; a ScienceQA folder
gives its own val and test), else those of the demo set or ScienceQA folder that trains (in a
mixture, the first entry that has them). Bad records follow `data.on_error`; with "skip" they are
counted by reason in the SkipCounter the caller passes, and more than half of a file skipped for one
reason is an error."""
import json
import random
from pathlib import Path

from minilvlm.config import ConfigError
from minilvlm.io import atomic_write_with

from minilvlm.data import demo
from minilvlm.data.errors import SkipCounter, check_most_not_skipped
from minilvlm.data.formats import detect_format, read_data
from minilvlm.data.tokenizer import Tokenizer
from minilvlm.data.word_tokenizer import build_word_tokenizer
from minilvlm.recipes import of

DEMO_LAYOUT = 2   # 2: image paths relative to the JSON file's folder (1 named them under images/)


def demo_data_dir(cfg, run_dir):
    """The demo set, generated once per (seed, sizes) into run_dir/data (seconds)."""
    folder = Path(run_dir) / "data"
    image_size = of(cfg).image_size(cfg)
    stamp = {"seed": cfg.data.demo_seed, "sizes": cfg.data.demo_sizes, "image_size": image_size,
             "mc_fraction": cfg.data.demo_mc_fraction, "layout": DEMO_LAYOUT}
    if cfg.data.demo_tasks != "shapes":
        stamp["tasks"] = cfg.data.demo_tasks
    marker = folder / "generated.json"
    try:
        current = json.loads(marker.read_text()) if marker.is_file() else None
    except (OSError, ValueError):
        current = None
    if current != stamp:
        demo.generate(folder, seed=cfg.data.demo_seed, sizes=cfg.data.demo_sizes, image_size=image_size,
                      mc_fraction=cfg.data.demo_mc_fraction, tasks=cfg.data.demo_tasks)
        marker.write_text(json.dumps(stamp))
    return folder


def load_records(cfg, run_dir, skips=None):
    """{split: records}: train, and the held-out splits for evaluation, as the recipe reads them.
    Records skipped under data.on_error = "skip" are counted in `skips` (a SkipCounter)."""
    recipe = of(cfg)
    skips = skips if skips is not None else SkipCounter()
    splits = _read_splits(cfg, run_dir, skips)
    return {split: recipe.prepare_records(cfg, records) for split, records in splits.items()}


def _read_set(cfg, run_dir, entry, split, skips):
    """The records of one split of one set ({path, format, image_root}); path "demo" is the demo set."""
    mine = SkipCounter()
    if entry["path"] == "demo":
        records = demo.load_demo(demo_data_dir(cfg, run_dir), split, cfg.data.on_error, mine)
    else:
        records, _ = read_data(entry["path"], entry.get("format", "auto"), entry.get("image_root") or None, split,
                               cfg.data.on_error, mine)
    check_most_not_skipped(mine.counts, len(records) + mine.total, entry["path"], mine.examples)
    skips.merge(mine.counts)
    for reason, examples in mine.examples.items():
        skips.examples.setdefault(reason, examples)
    return records


def _has_held_out(entry):
    if entry["path"] == "demo":
        return True
    fmt = entry.get("format", "auto")
    return fmt == "scienceqa" or (fmt == "auto" and Path(entry["path"]).is_dir() and
                                  detect_format(entry["path"]) == "scienceqa")


def _held_out(cfg, run_dir, entry, skips):
    if entry["path"] == "demo":
        return {split: _read_set(cfg, run_dir, entry, split, skips) for split in cfg.data.demo_sizes if split != "train"}
    return {split: _read_set(cfg, run_dir, entry, split, skips) for split in ("val", "test")}


def _read_splits(cfg, run_dir, skips):
    d = cfg.data
    sets = d.mixture or [{"path": d.dataset, "format": d.format, "image_root": d.image_root}]
    trains = [_read_set(cfg, run_dir, entry, "train", skips) for entry in sets]
    splits = {"train": trains[0] if len(sets) == 1 else
              mix(trains, [e.get("weight", 1.0) for e in sets], cfg.train.seed)}
    if d.eval_file:
        entry = {"path": d.eval_file, "format": d.format, "image_root": d.image_root}
        if _has_held_out(entry):
            splits.update(_held_out(cfg, run_dir, entry, skips))
        else:
            splits["val"] = splits["test"] = _read_set(cfg, run_dir, entry, "test", skips)
        return splits
    source = next((e for e in sets if _has_held_out(e)), None)
    if source is not None:
        splits.update(_held_out(cfg, run_dir, source, skips))
    return splits


# A tokenizer's files, as transformers saves them; the run keeps those its source has.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def copy_tokenizer(source, run_dir):
    """Copy the tokenizer of `source` (a folder holding tokenizer.json, or a tokenizer .json file) and
    the files beside it into run_dir as TOKENIZER_FILES; a file is rewritten only when its bytes
    differ (so ranks after the first find the copy done), and one the source lacks is removed."""
    source = Path(source)
    main = source / "tokenizer.json" if source.is_dir() else source
    if not main.is_file():
        raise ConfigError(f"data.tokenizer = {str(source)!r}: {main} not found; minilvlm reads the fast-tokenizer "
                          f"file tokenizer.json (save it with `tokenizer.save_pretrained` in transformers)")
    files = {name: main.parent / name for name in TOKENIZER_FILES[1:]}
    files["tokenizer.json"] = main
    for name, file in files.items():
        target = Path(run_dir) / name
        if not file.is_file():
            target.unlink(missing_ok=True)
            continue
        data = file.read_bytes()
        if not target.is_file() or target.read_bytes() != data:
            atomic_write_with(target, lambda path, data=data: Path(path).write_bytes(data))


def mix(sets, weights, seed):
    """One training set from several: set i contributes round(w_i / sum(w) x the sets' total size)
    records, as whole passes over its records plus a seeded sample for the remainder (the same seed
    always gives the same mixture, so a resumed run sees the same data)."""
    total, weight_sum = sum(len(s) for s in sets), sum(weights)
    mixed = []
    for i, (records, weight) in enumerate(zip(sets, weights)):
        if not records:
            continue
        wanted = round(weight / weight_sum * total)
        passes, rest = divmod(wanted, len(records))
        mixed += records * passes + random.Random(seed * 1000 + i).sample(records, rest)
    return mixed


def load_tokenizer(cfg, run_dir, train_records):
    """The run's tokenizer, read from its copy in run_dir: the configured one (copied there while
    its source exists), or a word-level one built from the training texts (the same texts always
    give the same file)."""
    source = cfg.data.tokenizer
    if source and Path(source).exists():
        copy_tokenizer(source, run_dir)
    elif source and not (Path(run_dir) / "tokenizer.json").is_file():
        raise ConfigError(f"data.tokenizer = {source!r}: no such file or folder, and the run folder {run_dir} holds "
                          f"no copy of it; give a tokenizer.json or a model folder holding one")
    elif not (Path(run_dir) / "tokenizer.json").is_file():
        build_word_tokenizer((t.text for r in train_records for t in r.turns), run_dir)
    return Tokenizer(run_dir)
