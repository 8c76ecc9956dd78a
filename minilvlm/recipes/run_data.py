"""A run's data, as its config describes it: the records of each split (the generated demo set or
LLaVA files), prepared by the recipe, and the tokenizer (a configured one, or a word-level one built
from the training texts and kept in the run folder)."""
import json
from pathlib import Path

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


def load_tokenizer(cfg, run_dir, train_records):
    """The configured tokenizer, or a word-level one built from the training texts and saved as
    run_dir/tokenizer.json (the same texts always give the same file)."""
    if cfg.data.tokenizer:
        return Tokenizer(cfg.data.tokenizer)
    if not (Path(run_dir) / "tokenizer.json").is_file():
        build_word_tokenizer((t.text for r in train_records for t in r.turns), run_dir)
    return Tokenizer(run_dir)
