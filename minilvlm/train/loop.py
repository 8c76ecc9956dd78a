"""The training loop: gradient accumulation to a global batch, optional bf16 autocast, clipping,
a per-step lr schedule, periodic evaluation and checkpoints, and resume from a run folder."""
import contextlib
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from minilvlm.data.loader import ResumableLoader
from minilvlm.data.sampler import ResumableBatchSampler
from minilvlm.io import atomic_write_json, atomic_write_text
from minilvlm.optim import FusedAdamW, ZeroAdamW
from minilvlm.train import checkpoint, setup, vision_pretrain
from minilvlm.train.config import ConfigError, to_dict
from minilvlm.train.distributed import init_distributed, shutdown_distributed
from minilvlm.train.evaluate import evaluate, summarize
from minilvlm.train.logging import MetricsLog, Progress, plot_metrics
from minilvlm.train.schedule import lr_at


def _batches(loader):
    """Micro-batches across epochs, forever (the loader moves to the next epoch by itself)."""
    while True:
        yield from loader


def _eval_row(result, prefix="eval"):
    row = {f"{prefix}/{k}": v for k, v in result["accuracy"].items()}
    row.update({f"{prefix}/n/{k}": v for k, v in result["count"].items()})
    return row


def _print_eval(result, title, samples, stream):
    print(f"{title}:", file=stream)
    for key in sorted(result["accuracy"]):
        if not key.startswith("task/"):
            print(f"  {key:<18} {100 * result['accuracy'][key]:5.1f}%  ({result['count'][key]} questions)", file=stream)
    tasks = " ".join(f"{k[5:]} {100 * v:.0f}%" for k, v in sorted(result["accuracy"].items()) if k.startswith("task/"))
    print(f"  per task: {tasks}", file=stream)
    for record, text, correct in result["answers"][:samples]:
        question = record.turns[-2].text.replace("<image>\n", "[image] ").replace("\n", " / ")
        print(f"  Q: {question}\n     -> {text.strip()!r} (expected {record.meta.get('answer')!r}, "
              f"{'right' if correct else 'wrong'})", file=stream)


def _sum_over_ranks(values, world):
    """Element-wise sum of a list of numbers over all ranks (float64: exact for token counts)."""
    if world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def _evaluate(model, records, tokenizer, rank, world, **kwargs):
    """evaluate() with the records split over the ranks; every rank gets the whole result."""
    if world == 1:
        return evaluate(model, records, tokenizer, **kwargs)
    mine = evaluate(model, records[rank::world], tokenizer, **kwargs)["answers"]
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, mine)
    answers = [None] * len(records)
    for r, part in enumerate(gathered):
        answers[r::world] = part
    return summarize(answers)


def _pretrain_vision(model, splits, cfg, world, stream):
    """The from-scratch tower's pretraining (minilvlm/train/vision_pretrain.py), or None with a note
    when the tower is loaded. Every rank runs the same steps; rank 0's result is broadcast so that
    the ranks start the recipe from one tower whatever their thread counts did to the rounding."""
    reason = vision_pretrain.skip_reason(cfg)
    if reason:
        print(f"vision pretraining skipped: {reason}", file=stream)
        return None
    result = vision_pretrain.pretrain_vision(model, splits["train"], splits.get("val", []), cfg, stream)
    if world > 1:
        for tensor in model.vision.state_dict().values():
            torch.distributed.broadcast(tensor, src=0)
    return result


def train(cfg, run_dir=None, resume=False, stream=None):
    """Run (or resume) training as configured; returns the final evaluation's accuracies. Under
    torchrun every rank calls this: the data is sharded per rank, ZeroAdamW shards the optimizer
    state, and rank 0 alone writes logs, metrics and the model checkpoint."""
    t = cfg.train
    rank, world = init_distributed()
    if t.global_batch % (t.micro_batch * world):
        raise ConfigError(f"train.global_batch ({t.global_batch}) must be a multiple of train.micro_batch "
                          f"({t.micro_batch}) x the {world} ranks")
    try:
        return _train(cfg, rank, world, run_dir, resume, stream)
    finally:
        shutdown_distributed()


def _train(cfg, rank, world, run_dir, resume, stream):
    t = cfg.train
    stream = (stream or sys.stderr) if rank == 0 else open(os.devnull, "w")
    run_dir = Path(run_dir or t.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if t.threads:
        torch.set_num_threads(t.threads)
    if t.deterministic:
        torch.use_deterministic_algorithms(True)
    random.seed(t.seed)
    np.random.seed(t.seed)
    torch.manual_seed(t.seed)

    started = time.perf_counter()
    # Rank 0 first: it generates the demo set and builds the tokenizer file on first use; the other
    # ranks then read both (building them concurrently raced on tokenizer.json).
    if rank == 0:
        splits = setup.load_records(cfg, run_dir)
        tokenizer = setup.load_tokenizer(cfg, run_dir, splits["train"])
    if world > 1:
        torch.distributed.barrier()
    if rank != 0:
        splits = setup.load_records(cfg, run_dir)
        tokenizer = setup.load_tokenizer(cfg, run_dir, splits["train"])
    model = setup.build_model(cfg, tokenizer)
    resume_from = checkpoint.latest(run_dir) if resume else None
    if resume and resume_from is None:
        raise FileNotFoundError(f"--resume {run_dir}: no complete checkpoint under {run_dir / 'checkpoints'}")
    vision_summary = None
    if cfg.model.recipe == "llava" and t.vision_pretrain_steps and resume_from is None:
        # A resumed run's tower comes from its checkpoint, already pretrained.
        vision_summary = _pretrain_vision(model, splits, cfg, world, stream)
    model.set_stage(t.stage, pretrain_lm=t.pretrain_lm, train_vision=t.train_vision)
    dataset = setup.build_dataset(cfg, splits["train"], tokenizer, model.config.image_tokens)
    sampler = ResumableBatchSampler(dataset.lengths, t.micro_batch, rank=rank, world_size=world, seed=t.seed)
    loader = ResumableLoader(dataset, sampler, tokenizer.pad_id, num_workers=cfg.data.num_workers)
    o = cfg.optim
    optimizer = (ZeroAdamW if world > 1 else FusedAdamW)(
        model.param_groups(o.lr, o.projector_lr, o.vision_lr), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
        weight_decay=o.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    accum = t.global_batch // (t.micro_batch * world)
    steps_per_epoch = len(dataset) / t.global_batch

    step = 0
    if resume_from is not None:
        state = checkpoint.load_checkpoint(resume_from, model, optimizer, rank=rank, world=world)
        loader.load_state_dict(state["data"])
        step = state["step"]
        print(f"resumed from {resume_from} at step {step}", file=stream)
    if rank == 0:
        atomic_write_json(to_dict(cfg), run_dir / "config.json")
    log = MetricsLog(run_dir / "metrics.jsonl" if rank == 0 else None, resume_step=step if resume_from else None)

    n_params = sum(p.numel() for p in model.parameters())
    n_trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"run {run_dir}: {len(dataset)} training samples, vocab {tokenizer.vocab_size}, model "
          f"{n_params / 1e6:.2f}M params ({n_trained / 1e6:.2f}M trained), {t.steps} steps of "
          f"{t.global_batch} ({accum} x {t.micro_batch}{f' x {world} ranks' if world > 1 else ''}), "
          f"{steps_per_epoch:.0f} steps per epoch", file=stream)

    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if t.bf16 else contextlib.nullcontext())
    eval_kwargs = dict(template=cfg.data.template, image_size=cfg.image_size,
                       batch=cfg.eval.batch, max_new_tokens=cfg.eval.max_new_tokens,
                       blank_images=cfg.data.blank_images, image_mode=cfg.data.image_mode,
                       autocast_dtype=torch.bfloat16 if t.bf16 else None)
    val = splits.get("val", [])
    val = val[:cfg.eval.limit] if cfg.eval.limit else val
    progress = Progress(t.steps, start_step=step, stream=stream)
    batches = _batches(loader)
    last = t.stop_at if t.stop_at else t.steps
    model.train()
    window = {"tokens": 0, "images": 0, "time": time.perf_counter()}
    while step < last:
        micro = [next(batches) for _ in range(accum)]
        total, = _sum_over_ranks([sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)], world)
        loss_sum, aux_sum = 0.0, None
        for batch in micro:
            images = torch.full_like(batch["images"], 128) if cfg.data.blank_images else batch["images"]
            with autocast:
                loss, _, aux = model.batch_loss(batch, images)
            # ZeroAdamW averages the grads over ranks: scale by world so that the sum over ranks
            # is the global batch's token mean, the single-process objective.
            objective = loss * (world / max(total, 1))
            if aux is not None:  # a per-micro-batch mean: weigh it by its share of the global batch
                objective = objective + aux / accum
                aux_sum = (aux_sum or 0.0) + aux.item() / accum
            objective.backward()
            loss_sum += loss.item()
            window["tokens"] += int(batch["attention_mask"].sum())
            window["images"] += batch["images"].shape[0]
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = lr_at(step, t.steps, base, o, steps_per_epoch)
        grad_norm, scale = optimizer.clip_scale(o.clip) if o.clip > 0 else (optimizer.grad_norm(), None)
        optimizer.step(grad_scale=scale)
        optimizer.zero_grad()
        step += 1

        if t.log_every and (step % t.log_every == 0 or step == last):
            elapsed = time.perf_counter() - window["time"]
            loss_sum, tokens, images = _sum_over_ranks([loss_sum, window["tokens"], window["images"]], world)
            row = {"step": step, "loss": loss_sum / max(total, 1), "lr": optimizer.param_groups[0]["lr"],
                   "grad_norm": float(grad_norm), "tokens_per_s": tokens / elapsed,
                   "images_per_s": images / elapsed, "time": time.perf_counter() - started}
            if aux_sum is not None:  # the recipe's auxiliary term (EVE: alignment), mean over ranks
                row["aux_loss"] = _sum_over_ranks([aux_sum], world)[0] / world
            row.update(loader.metrics())
            log.write(row)
            progress.update(step, row["loss"], row["lr"], row["tokens_per_s"], row["images_per_s"])
            window = {"tokens": 0, "images": 0, "time": time.perf_counter()}
        if val and t.eval_every and step % t.eval_every == 0 and step < t.steps:
            result = _evaluate(model, val, tokenizer, rank, world, **eval_kwargs)
            log.write({"step": step, **_eval_row(result)})
            _print_eval(result, f"step {step}: held-out (val) accuracy", 2, stream)
            window["time"] = time.perf_counter()
        if (t.ckpt_every and step % t.ckpt_every == 0) or step == last:
            checkpoint.save_checkpoint(run_dir, step, model, optimizer, to_dict(cfg),
                                       {"data": loader.state_dict()}, rank=rank, world=world)
    loader.close()
    del optimizer  # before the process group goes (shutdown_distributed)

    summary = {"step": step, "train_time_s": time.perf_counter() - started}
    if vision_summary is not None:
        summary["vision_pretrain"] = vision_summary
    test = splits.get(cfg.eval.split, [])
    if step >= t.steps and test:
        result = _evaluate(model, test, tokenizer, rank, world, **eval_kwargs)
        log.write({"step": step, **_eval_row(result)})
        _print_eval(result, f"held-out ({cfg.eval.split}) accuracy after {step} steps", cfg.eval.samples, stream)
        summary.update(accuracy=result["accuracy"], count=result["count"])
        samples = "\n".join(f"{r.id}\t{r.turns[-2].text!r}\t{text.strip()!r}\t{r.meta.get('answer')!r}\t{ok}"
                            for r, text, ok in result["answers"])
        if rank == 0:
            atomic_write_text(samples + "\n", run_dir / "samples.tsv")
    summary["total_time_s"] = time.perf_counter() - started
    if rank == 0:
        atomic_write_json(summary, run_dir / "summary.json")
        plot_metrics(log.rows, run_dir / "metrics.png")
    print(f"done in {summary['total_time_s']:.0f} s; run folder {run_dir} (metrics.jsonl, metrics.png, "
          f"checkpoints/, samples.tsv)", file=stream)
    return summary
