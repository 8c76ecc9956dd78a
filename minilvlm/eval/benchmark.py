"""Scoring a loaded model on a held-out split: the records (the run's demo split, a LLaVA file,
or a ScienceQA folder), batched greedy generation with the trainer's own evaluate(), and the
Table 1 breakdown (scienceqa_metrics)."""
from pathlib import Path

import torch

from minilvlm.data.records import read_records
from minilvlm.data.scienceqa import read_scienceqa
from minilvlm.eval.load import LoadError
from minilvlm.eval.scienceqa_metrics import score
from minilvlm.train import setup
from minilvlm.train.evaluate import evaluate


def load_split(loaded, split, data=None, image_root=None):
    """Records to evaluate: `data` may be a ScienceQA folder (problems.json, pid_splits.json; `split`
    picks the problems), a LLaVA .json/.jsonl file, or None for the run's own `split`."""
    if data is None:
        splits = setup.load_records(loaded.cfg, loaded.run_dir)
        if split not in splits:
            raise LoadError(f"the run has no {split!r} split (it has {', '.join(sorted(splits))}); "
                            "pass --split or --data FILE")
        return splits[split]
    data = Path(data)
    if data.is_dir():
        if not (data / "problems.json").is_file():
            raise LoadError(f"{data}: a folder given as data must be a ScienceQA release (problems.json, "
                            "pid_splits.json, images/)")
        return setup.recipe_records(loaded.cfg, read_scienceqa(data, split, image_dir=image_root))
    if not data.is_file():
        raise LoadError(f"{data}: no such file")
    return setup.recipe_records(loaded.cfg, read_records(data, "llava", image_root=image_root))


def eval_records(loaded, records, batch=None, max_new_tokens=None):
    """score() of the model's greedy replies, generated exactly as the trainer's final evaluation
    does (same batching, autocast and image handling), so the accuracies match it bit for bit."""
    if not records:
        raise LoadError("no records to evaluate")
    missing = [r.id for r in records if "answer" not in r.meta]
    if missing:
        raise LoadError(f"{len(missing)} record(s) have no 'answer' to score against (first: {missing[0]!r}); "
                        "evaluation needs records with answer metadata (demo or ScienceQA)")
    cfg = loaded.cfg
    answers = evaluate(loaded.model, records, loaded.tokenizer, template=cfg.data.template,
                       image_size=cfg.model.vision.image_size, batch=batch or cfg.eval.batch,
                       max_new_tokens=max_new_tokens or cfg.eval.max_new_tokens,
                       blank_images=cfg.data.blank_images, image_mode=cfg.data.image_mode,
                       autocast_dtype=torch.bfloat16 if cfg.train.bf16 else None)["answers"]
    return score(answers)
