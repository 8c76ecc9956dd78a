"""Evaluation during and after training, and the run's final report: held-out accuracy and held-out
loss (split over the ranks under torchrun), samples.jsonl, summary.json (with the records skipped by
reason) and the metrics plot."""
import json
import time

import torch
from torch.distributed.fsdp import FSDPModule

from minilvlm.eval.evaluate import evaluate
from minilvlm.eval.heldout import heldout_loss_sums
from minilvlm.eval.report import print_eval
from minilvlm.eval.score import expected_answer, question_type, summarize
from minilvlm.io import atomic_write_json, atomic_write_text
from minilvlm.train.distributed import sum_over_ranks
from minilvlm.train.logging import plot_metrics


def _heldout_loss(run, records):
    """The mean reply-token NLL of the held-out records (the ranks score their share and add up; under
    FSDP every rank scores them all, since its ranks must make the same forward passes)."""
    cfg = run.cfg
    lockstep = isinstance(run.model, FSDPModule)
    share = records if lockstep else records[run.rank::run.world]
    total, count = heldout_loss_sums(run.model, share, run.tokenizer, cfg.data.template,
                                     run.recipe.image_config(cfg), cfg.data.max_len, batch=cfg.eval.batch,
                                     precision=cfg.train.precision)
    if not lockstep:
        total, count = sum_over_ranks([total, count], run.world, run.device)
    return total / count if count else float("nan")


def evaluate_run(run, records):
    """evaluate() of the run's model with the records split over the ranks, plus the held-out loss;
    every rank gets the whole result. An FSDP model runs every rank through the same generation steps
    (its blocks gather their weights collectively), with the root's own weights gathered for the
    duration."""
    cfg = run.cfg
    kwargs = dict(batch=cfg.eval.batch, max_new_tokens=cfg.eval.max_new_tokens, precision=cfg.train.precision)
    images = run.recipe.image_config(cfg)
    if run.world == 1:
        result = evaluate(run.model, records, run.tokenizer, cfg.data.template, images, **kwargs)
    else:
        fsdp = isinstance(run.model, FSDPModule)
        if fsdp:
            kwargs["batches"] = -(-len(records[0::run.world]) // cfg.eval.batch)   # rank 0 has the most
            run.model.unshard()
        try:
            mine = evaluate(run.model, records[run.rank::run.world], run.tokenizer, cfg.data.template, images,
                            **kwargs)["answers"]
        finally:
            if fsdp:
                run.model.reshard()
        gathered = [None] * run.world
        torch.distributed.all_gather_object(gathered, mine)
        answers = [None] * len(records)
        for r, part in enumerate(gathered):
            answers[r::run.world] = part
        result = summarize(answers)
    result["loss"] = _heldout_loss(run, records)
    return result


def eval_row(result, prefix="eval"):
    """A metrics.jsonl row of an evaluation: accuracy and question count per type and task, and the
    held-out loss."""
    row = {f"{prefix}/{k}": v for k, v in result["accuracy"].items()}
    row.update({f"{prefix}/n/{k}": v for k, v in result["count"].items()})
    if "loss" in result:
        row[f"{prefix}/loss"] = result["loss"]
    return row


def _write_samples(run, result):
    """samples.jsonl: every final answer, one JSON object per line."""
    lines = [json.dumps({"id": r.id, "question_type": question_type(r), "task": r.meta.get("task"),
                         "question": r.turns[-2].text, "reply": text.strip(), "expected": expected_answer(r),
                         "correct": bool(ok)}) + "\n" for r, text, ok in result["answers"]]
    atomic_write_text("".join(lines), run.run_dir / "samples.jsonl")


def final_report(run):
    """The final evaluation (after the last step) and summary.json; returns the summary."""
    cfg = run.cfg
    summary = {"step": run.step, "train_time_s": time.perf_counter() - run.started, **run.summary}
    test = run.splits.get(cfg.eval.split, [])
    wrote = ["metrics.jsonl", "metrics.png", "checkpoints/"]
    if run.step >= cfg.train.steps and test:
        result = evaluate_run(run, test)
        run.log.write({"step": run.step, **eval_row(result)})
        print_eval(result, f"held-out ({cfg.eval.split}) accuracy after {run.step} steps", cfg.eval.samples,
                   run.stream)
        print(f"  held-out loss {result['loss']:.4f}", file=run.stream)
        summary.update(accuracy=result["accuracy"], count=result["count"], heldout_loss=result["loss"])
        if run.rank == 0:
            _write_samples(run, result)
            wrote.append("samples.jsonl")
    elif run.step >= cfg.train.steps:
        print(f"no final evaluation: the run has no held-out {cfg.eval.split!r} records (data.eval_file)",
              file=run.stream)
    summary["data"] = run.loader.metrics()
    print(run.loader.report(), file=run.stream)
    summary["total_time_s"] = time.perf_counter() - run.started
    if run.rank == 0:
        atomic_write_json(summary, run.run_dir / "summary.json")
        plot_metrics(run.log.rows, run.run_dir / "metrics.png")
    run.log.close()
    print(f"done in {summary['total_time_s']:.0f} s; run folder {run.run_dir} ({', '.join(wrote)})", file=run.stream)
    return summary
