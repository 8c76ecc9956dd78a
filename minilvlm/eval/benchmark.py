"""Scoring a loaded model on a held-out split: the records (the run's own split, a generated demo
folder, a LLaVA or Alpaca file, or a ScienceQA folder), batched greedy generation with the trainer's
own evaluate(), and the Table 1 breakdown (scienceqa_metrics). Bad records are counted by reason and
left out; more than half of them skipped for one reason is an error (the data does not fit)."""
from pathlib import Path

from minilvlm.data import demo
from minilvlm.data.errors import SkipCounter, check_most_not_skipped
from minilvlm.data.formats import read_data
from minilvlm.eval.evaluate import evaluate
from minilvlm.eval.load import LoadError
from minilvlm.eval.scienceqa_metrics import score
from minilvlm.recipes.run_data import load_records


def _read(data, split, image_root, skips):
    if data.is_dir() and not (data / "problems.json").is_file():
        if not (data / f"{split}.json").is_file():
            raise LoadError(f"{data}: a folder given as data must be a ScienceQA release (problems.json, "
                            f"pid_splits.json, images/) or a demo data folder holding {split}.json")
        return demo.load_demo(data, split, on_error="skip", skips=skips)
    if not data.exists():
        raise LoadError(f"{data}: no such file")
    records, _ = read_data(data, "auto", image_root=image_root, split=split, on_error="skip", skips=skips)
    return records


def load_split(loaded, split, data=None, image_root=None):
    """(records, {skip reason: count}) to evaluate: `data` may be a ScienceQA folder (problems.json,
    pid_splits.json; `split` picks the problems), a demo data folder (written by
    `python -m minilvlm.data.demo` or a run's data/; `split` picks the file), a LLaVA or Alpaca
    .json/.jsonl file, or None for the run's own `split`."""
    if data is None:
        splits = load_records(loaded.cfg, loaded.run_dir)
        if split not in splits:
            raise LoadError(f"the run has no {split!r} split (it has {', '.join(sorted(splits))}); "
                            "pass --split or --data FILE")
        return splits[split], {}
    skips = SkipCounter()
    records = _read(Path(data), split, image_root, skips)
    check_most_not_skipped(skips.counts, len(records) + skips.total, data, skips.examples)
    return loaded.recipe.prepare_records(loaded.cfg, records), dict(skips.counts)


def eval_records(loaded, records, batch=None, max_new_tokens=None):
    """score() of the model's greedy replies, generated exactly as the trainer's final evaluation
    does (same batching, autocast and image handling), so the accuracies match it bit for bit.
    Records without an `answer` are scored against their last assistant reply."""
    if not records:
        raise LoadError("no records to evaluate")
    cfg = loaded.cfg
    answers = evaluate(loaded.model, records, loaded.tokenizer, cfg.data.template, loaded.images,
                       batch=batch or cfg.eval.batch, max_new_tokens=max_new_tokens or cfg.eval.max_new_tokens,
                       precision=cfg.train.precision)["answers"]
    return score(answers)
