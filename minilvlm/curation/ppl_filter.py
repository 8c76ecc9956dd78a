"""Perplexity filtering of a data file end to end (tools/ppl_filter.py is its command line): read the
records with their JSON objects, score them with a reference model (the records split round-robin
over torchrun ranks), keep the lowest-scoring ones, and write the kept records, the scores, the
statistics and a histogram."""
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from minilvlm import recipes
from minilvlm.config import apply_overrides, to_dict
from minilvlm.curation.filter_output import (
    plot_histogram,
    read_with_objects,
    write_subset,
)
from minilvlm.curation.perplexity import score_records, select, stats
from minilvlm.curation.trials import (Trial, completed_config, mean_and_spread, run_trials, same_run, say,
                                      trial_config)
from minilvlm.data.errors import SkipCounter, check_most_not_skipped
from minilvlm.data.formats import detect_format
from minilvlm.eval.load import LoadError, load_model, resolve_checkpoint
from minilvlm.io import atomic_write_json, atomic_write_text


@dataclass
class FilterJob:
    data: str                 # a LLaVA or Alpaca .json/.jsonl file
    model: str                # the reference run or checkpoint folder
    out: str                  # the kept records (.json or .jsonl)
    keep: float = None        # fraction to keep (lowest scores), or
    threshold: float = None   # the highest mean NLL kept
    fmt: str = "auto"         # "auto" | "llava" | "alpaca"
    image_root: str = None
    batch: int = 16
    device: str = "auto"      # under torchrun "cuda" is each rank's own GPU


def output_paths(out):
    """OUT and the files written beside it: statistics, scores and the histogram."""
    out = Path(out)
    base = out.with_suffix("")
    return [out, base.with_name(base.name + ".stats.json"), base.with_name(base.name + ".scores.jsonl"),
            base.with_name(base.name + ".hist.png")]


def check_outputs(job):
    """Nothing the filter writes may replace its input file or a file of the reference model's run."""
    data = Path(job.data).resolve()
    _, run_dir = resolve_checkpoint(job.model)
    run_dir = Path(run_dir).resolve()
    for path in output_paths(job.out):
        resolved = path.resolve()
        if resolved == data:
            raise LoadError(f"--out would write {path} over the input {job.data}; choose another output file")
        if resolved.exists() and resolved.is_relative_to(run_dir):
            raise LoadError(f"--out would overwrite {path}, a file of the reference model's run {run_dir}; "
                            "choose another output file")


def _gather(values, world):
    if world == 1:
        return [values]
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, values)
    return gathered


def score_file(job, rank=0, world=1):
    """(format, pairs [(record, object)], scores, skip counts by reason, the loaded model); every rank
    reads all records and scores its round-robin share, and every rank gets all scores. More than half
    of the records skipped for one reason is an error (minilvlm.data.errors.check_most_not_skipped)."""
    fmt = detect_format(job.data) if job.fmt == "auto" else job.fmt
    if fmt not in ("llava", "alpaca"):
        raise LoadError(f"{job.data}: perplexity filtering writes the kept records back in their own format, "
                        f"LLaVA or Alpaca; {fmt} is neither")
    read_skips, score_skips = SkipCounter(), SkipCounter()
    pairs = read_with_objects(job.data, fmt, job.image_root, read_skips)
    loaded = load_model(job.model, device=job.device)
    mine = [pairs[i][0] for i in range(rank, len(pairs), world)]
    scores = [None] * len(pairs)
    skip_counts = dict(read_skips.counts)
    read_total = len(pairs) + read_skips.total
    gathered = _gather((score_records(loaded, mine, job.batch, score_skips), dict(score_skips.counts)), world)
    for r, (part, counts) in enumerate(gathered):
        scores[r::world] = part
        for reason, n in counts.items():
            skip_counts[reason] = skip_counts.get(reason, 0) + n
    check_most_not_skipped(skip_counts, read_total, job.data, read_skips.examples)
    return fmt, pairs, scores, skip_counts, loaded


def run_filter(job, rank=0, world=1):
    """Score, select and (on rank 0) write OUT, OUT.stats.json, OUT.scores.jsonl and OUT.hist.png.
    Returns the statistics (None on other ranks)."""
    check_outputs(job)
    fmt, pairs, scores, skip_counts, loaded = score_file(job, rank, world)
    if rank != 0:
        return None
    flags, cut_value = select(scores, keep=job.keep, threshold=job.threshold)
    out, stats_path, scores_path, hist_path = output_paths(job.out)
    summary = stats(scores, flags, cut_value)
    summary.update(data=job.data, format=fmt, model=str(loaded.checkpoint), keep=job.keep, threshold=job.threshold,
                   skipped=skip_counts, ranks=world, written=write_subset([obj for _, obj in pairs], flags, out))
    atomic_write_json(summary, stats_path)
    atomic_write_text("".join(json.dumps({"id": r.id, "score": s, "kept": f}) + "\n"
                              for (r, _), s, f in zip(pairs, scores, flags)), scores_path)
    plot_histogram(scores, cut_value, hist_path)
    return summary


@dataclass
class CompareJob:
    config: str               # the TOML config trained on both sets (its held-out split scores them)
    folder: str               # where the runs go: full@seedN/, kept@seedN/, compare.json
    steps: int = 0            # 0: the config's train.steps
    seeds: int = 1
    jobs: int = 1
    overrides: tuple = ()


def _train_on(run, data, root):
    """Point a run config at one training file: as data.dataset when its pictures lie beside it (the
    run is then the very config a reference model may have been trained with), else as a one-set
    data.mixture naming the input's image folder (data.image_root would move the held-out file's too)."""
    if Path(data).resolve().parent == Path(root):
        run.data.mixture = []
        apply_overrides(run, [f"data.dataset={json.dumps(str(Path(data).resolve()))}"])   # as a run saves it
    else:
        run.data.mixture = [{"path": str(Path(data).resolve()), "format": "auto", "image_root": str(root), "weight": 1.0}]
        apply_overrides(run, ["data.dataset=demo"])


def _reference_as(trial, model, report):
    """When the reference run trained exactly this trial's config and finished, it is this trial: its
    summary is taken instead of training the same run again. Returns its run folder, or None."""
    try:
        _, run_dir = resolve_checkpoint(model)
        saved = json.loads((Path(run_dir) / "config.json").read_text())
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
    except (LoadError, OSError, ValueError):
        return None
    if not same_run(completed_config(saved), trial.config, ignore=("run_dir", "threads")) \
            or summary.get("step") != trial.config["train"]["steps"] or "accuracy" not in summary:
        return None
    trial.summary, trial.reused = summary, True
    report(f"  reused   {trial.label}: the reference model {run_dir} is this run")
    return Path(run_dir)


def compare_runs(job, compare, report=None):
    """Train `compare.config` for the same steps on the full input and on the kept records, over
    `compare.seeds` seeds (separate processes, reused when finished: minilvlm/curation/trials.py; the
    reference model stands for the full set's seed 0 when it is that very run), and return
    {arm: {mean, spread, values, runs}} of held-out accuracy; written to FOLDER/compare.json."""
    report = report or say
    cfg = recipes.load_config(compare.config, list(compare.overrides), check_paths=False)
    steps = compare.steps or cfg.train.steps
    root = Path(job.image_root or Path(job.data).parent).resolve()
    folder = Path(compare.folder)
    trials = {}
    for arm, data in (("full", job.data), ("kept", job.out)):
        for seed in range(compare.seeds):
            run = recipes.config_from_dict(to_dict(cfg), str(compare.config))
            _train_on(run, data, root)
            where = folder / f"{arm}@seed{seed}"
            apply_overrides(run, [f"train.steps={steps}", f"train.seed={seed}", "train.stop_at=0",
                                  f"train.run_dir={json.dumps(str(where / 'run'))}"])
            recipes.validate(run, check_paths=True)
            trials[arm, seed] = Trial(where, trial_config(run), label=f"{arm} set (seed {seed})")
    report(f"compare: {compare.config} for {steps} steps on the full and the kept set, {compare.seeds} seed(s)")
    runs = {key: trial.run_dir for key, trial in trials.items()}
    runs["full", 0] = _reference_as(trials["full", 0], job.model, report) or runs["full", 0]
    run_trials(list(trials.values()), compare.jobs, report=report)
    result = {"config": compare.config, "steps": steps, "seeds": compare.seeds, "arms": {}}
    for arm, data in (("full", job.data), ("kept", job.out)):
        values = [trials[arm, s].accuracy for s in range(compare.seeds)]
        result["arms"][arm] = {"data": data, **mean_and_spread(values),
                               "runs": [str(runs[arm, s]) for s in range(compare.seeds)]}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(result, folder / "compare.json")
    return result
