"""A run's data, as its config describes it: the records of each split (the generated demo set or
LLaVA files), prepared by the recipe, and the tokenizer (a configured one, or a word-level one built
from the training texts). Either way the tokenizer's files are kept in the run folder and read from
there, so the run folder is self-contained (minilvlm/eval/load.py reads them back)."""
import json
from pathlib import Path

from minilvlm.config import ConfigError
from minilvlm.io import atomic_write_with

from minilvlm.data import demo
from minilvlm.data.records import read_records
from minilvlm.data.tokenizer import Tokenizer
from minilvlm.data.word_tokenizer import build_word_tokenizer
from minilvlm.recipes import of


def demo_data_dir(cfg, run_dir):
    """The demo set, generated once per (seed, sizes) into run_dir/data (seconds)."""
    folder = Path(run_dir) / "data"
    image_size = of(cfg).image_size(cfg)
    stamp = {"seed": cfg.data.demo_seed, "sizes": cfg.data.demo_sizes, "image_size": image_size,
             "mc_fraction": cfg.data.demo_mc_fraction}
    if cfg.data.demo_tasks != "shapes":
        stamp["tasks"] = cfg.data.demo_tasks
    marker = folder / "generated.json"
    if not (marker.is_file() and json.loads(marker.read_text()) == stamp):
        demo.generate(folder, seed=cfg.data.demo_seed, sizes=cfg.data.demo_sizes, image_size=image_size,
                      mc_fraction=cfg.data.demo_mc_fraction, tasks=cfg.data.demo_tasks)
        marker.write_text(json.dumps(stamp))
    return folder


def load_records(cfg, run_dir):
    """{split: records}: train, and the held-out splits for evaluation, as the recipe reads them."""
    recipe = of(cfg)
    return {split: recipe.prepare_records(cfg, records) for split, records in _read_splits(cfg, run_dir).items()}


def _read_splits(cfg, run_dir):
    if cfg.data.dataset == "demo":
        folder = demo_data_dir(cfg, run_dir)
        return {split: demo.load_demo(folder, split) for split in cfg.data.demo_sizes}
    root = cfg.data.image_root or None
    splits = {"train": read_records(cfg.data.dataset, "llava", image_root=root)}
    if cfg.data.eval_file:
        splits["val"] = splits["test"] = read_records(cfg.data.eval_file, "llava", image_root=root)
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
