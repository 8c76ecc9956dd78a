"""Evaluation during and after training, and the run's final report: held-out accuracy (split over
the ranks under torchrun), samples.tsv, summary.json and the metrics plot."""
import time

import torch
from torch.distributed.fsdp import FSDPModule

from minilvlm.eval.evaluate import evaluate
from minilvlm.eval.report import print_eval
from minilvlm.eval.score import summarize
from minilvlm.io import atomic_write_json, atomic_write_text
from minilvlm.train.logging import plot_metrics


def evaluate_run(run, records):
    """evaluate() of the run's model with the records split over the ranks; every rank gets the
    whole result. An FSDP model runs every rank through the same generation steps (its blocks
    gather their weights collectively), with the root's own weights gathered for the duration."""
    cfg = run.cfg
    kwargs = dict(batch=cfg.eval.batch, max_new_tokens=cfg.eval.max_new_tokens, precision=cfg.train.precision)
    images = run.recipe.image_config(cfg)
    if run.world == 1:
        return evaluate(run.model, records, run.tokenizer, cfg.data.template, images, **kwargs)
    if isinstance(run.model, FSDPModule):
        kwargs["batches"] = -(-len(records[0::run.world]) // cfg.eval.batch)   # rank 0 has the most
        run.model.unshard()
    try:
        mine = evaluate(run.model, records[run.rank::run.world], run.tokenizer, cfg.data.template, images,
                        **kwargs)["answers"]
    finally:
        if isinstance(run.model, FSDPModule):
            run.model.reshard()
    gathered = [None] * run.world
    torch.distributed.all_gather_object(gathered, mine)
    answers = [None] * len(records)
    for r, part in enumerate(gathered):
        answers[r::run.world] = part
    return summarize(answers)


def eval_row(result, prefix="eval"):
    """A metrics.jsonl row of an evaluation: accuracy and question count per type and task."""
    row = {f"{prefix}/{k}": v for k, v in result["accuracy"].items()}
    row.update({f"{prefix}/n/{k}": v for k, v in result["count"].items()})
    return row


def _write_samples(run, result):
    samples = "\n".join(f"{r.id}\t{r.turns[-2].text!r}\t{text.strip()!r}\t{r.meta.get('answer')!r}\t{ok}"
                        for r, text, ok in result["answers"])
    atomic_write_text(samples + "\n", run.run_dir / "samples.tsv")


def final_report(run):
    """The final evaluation (after the last step) and summary.json; returns the summary."""
    cfg = run.cfg
    summary = {"step": run.step, "train_time_s": time.perf_counter() - run.started, **run.summary}
    test = run.splits.get(cfg.eval.split, [])
    if run.step >= cfg.train.steps and test:
        result = evaluate_run(run, test)
        run.log.write({"step": run.step, **eval_row(result)})
        print_eval(result, f"held-out ({cfg.eval.split}) accuracy after {run.step} steps", cfg.eval.samples,
                   run.stream)
        summary.update(accuracy=result["accuracy"], count=result["count"])
        if run.rank == 0:
            _write_samples(run, result)
    summary["total_time_s"] = time.perf_counter() - run.started
    if run.rank == 0:
        atomic_write_json(summary, run.run_dir / "summary.json")
        plot_metrics(run.log.rows, run.run_dir / "metrics.png")
    print(f"done in {summary['total_time_s']:.0f} s; run folder {run.run_dir} (metrics.jsonl, metrics.png, "
          f"checkpoints/, samples.tsv)", file=run.stream)
    return summary
