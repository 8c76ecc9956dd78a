"""The files and folders a run config names, checked before anything runs: the data, the tokenizer,
the pretrained weights and the run folder itself (it must be a folder we can write). A run that is
only sized (`tools/train.py --dry-run`) reads none of them and skips this check."""
import os
from pathlib import Path

from minilvlm.config import ConfigError


def _problem(path, key, want_dir=False, inside=None):
    where = f"{key} = {str(path)!r}"
    try:
        p = Path(path)
        if not p.exists():
            return f"{where}: no such file or folder (a relative path starts at {Path.cwd()})"
        if want_dir and not p.is_dir():
            return f"{where}: not a folder"
        if inside and p.is_dir() and not (p / inside).is_file():
            return f"{where}: the folder holds no {inside}"
    except (OSError, ValueError) as err:
        return f"{where}: cannot be used: {getattr(err, 'strerror', None) or err}"
    return None


def _run_dir_problem(run_dir):
    where = f"train.run_dir = {str(run_dir)!r}"
    try:
        path = Path(run_dir).absolute()
        if path.exists() and not path.is_dir():
            return f"{where}: exists and is not a folder"
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            return f"{where}: {existing} is a file, not a folder"
        if not os.access(existing, os.W_OK | os.X_OK):
            return f"{where}: {existing} is not writable"
    except (OSError, ValueError) as err:
        return f"{where}: cannot be used: {getattr(err, 'strerror', None) or err}"
    return None


def input_problems(cfg):
    """Every named input that does not exist or cannot be used, as "key = 'path': why"."""
    d, m = cfg.data, cfg.model
    # A run reads its tokenizer from its own copy once it has one (minilvlm/recipes/run_data.py), so a
    # resumed run does not need the source any more.
    copied = (Path(cfg.train.run_dir) / "tokenizer.json").is_file()
    named = [(d.eval_file, "data.eval_file", False, None), (d.image_root, "data.image_root", True, None),
             ("" if copied else d.tokenizer, "data.tokenizer", False, "tokenizer.json"),
             (m.vision_weights, "model.vision_weights", False, None), (m.lm_weights, "model.lm_weights", False, None),
             (m.init_from, "model.init_from", False, None)]
    if d.dataset != "demo":
        named.append((d.dataset, "data.dataset", d.format == "scienceqa", None))
    for i, entry in enumerate(d.mixture):
        if entry["path"] != "demo":
            named.append((entry["path"], f"data.mixture[{i}].path", entry.get("format") == "scienceqa", None))
        named.append((entry.get("image_root", ""), f"data.mixture[{i}].image_root", True, None))
    if m.recipe == "mma":
        named += [(m.mma.base_checkpoint, "model.mma.base_checkpoint", False, None),
                  (m.mma.vision_weights, "model.mma.vision_weights", False, None),
                  (m.mma.lm_weights, "model.mma.lm_weights", False, None)]
    found = [_problem(path, key, want_dir, inside) for path, key, want_dir, inside in named if path]
    found.append(_run_dir_problem(cfg.train.run_dir))
    return [f for f in found if f]


def check_inputs(cfg):
    problems = input_problems(cfg)
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg
