"""Scoring a loaded model on a held-out split: the records (the run's own split, a generated demo
folder, a LLaVA file, or a ScienceQA folder), batched greedy generation with the trainer's own
evaluate(), and the Table 1 breakdown (scienceqa_metrics)."""
from pathlib import Path

from minilvlm.data import demo
from minilvlm.data.records import read_records
from minilvlm.data.scienceqa import read_scienceqa
from minilvlm.eval.evaluate import evaluate
from minilvlm.eval.load import LoadError
from minilvlm.eval.scienceqa_metrics import score
from minilvlm.recipes.run_data import load_records


def load_split(loaded, split, data=None, image_root=None):
    """Records to evaluate: `data` may be a ScienceQA folder (problems.json, pid_splits.json; `split`
    picks the problems), a demo data folder (written by `python -m minilvlm.data.demo` or a run's
    data/; `split` picks the file), a LLaVA .json/.jsonl file, or None for the run's own `split`."""
    if data is None:
        splits = load_records(loaded.cfg, loaded.run_dir)
        if split not in splits:
            raise LoadError(f"the run has no {split!r} split (it has {', '.join(sorted(splits))}); "
                            "pass --split or --data FILE")
        return splits[split]
    data = Path(data)
    if data.is_dir():
        if (data / "problems.json").is_file():
            records = read_scienceqa(data, split, image_dir=image_root)
        elif (data / f"{split}.json").is_file():
            records = demo.load_demo(data, split)
        else:
            raise LoadError(f"{data}: a folder given as data must be a ScienceQA release (problems.json, "
                            f"pid_splits.json, images/) or a demo data folder holding {split}.json")
    elif data.is_file():
        records = read_records(data, "llava", image_root=image_root)
    else:
        raise LoadError(f"{data}: no such file")
    return loaded.recipe.prepare_records(loaded.cfg, records)


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
    answers = evaluate(loaded.model, records, loaded.tokenizer, cfg.data.template, loaded.images,
                       batch=batch or cfg.eval.batch, max_new_tokens=max_new_tokens or cfg.eval.max_new_tokens,
                       precision=cfg.train.precision)["answers"]
    return score(answers)
