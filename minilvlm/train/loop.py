"""The training loop: gradient accumulation to a global batch, optional bf16 autocast, clipping,
a per-step lr schedule, periodic evaluation and checkpoints. Run setup is in run.py, the final
evaluation and summary in report.py."""
import contextlib
import time

import torch

from minilvlm.config import ConfigError, to_dict
from minilvlm.eval.report import print_eval
from minilvlm.optim.schedule import lr_at
from minilvlm.train import checkpoint
from minilvlm.train.distributed import init_distributed, shutdown_distributed, sum_over_ranks
from minilvlm.train.logging import Progress
from minilvlm.train.report import eval_row, evaluate_run, final_report
from minilvlm.train.run import setup_run


def train(cfg, run_dir=None, resume=False, stream=None):
    """Run (or resume) training as configured; returns the final summary. Under torchrun every rank
    calls this: the data is sharded per rank, ZeroAdamW shards the optimizer state, and rank 0
    alone writes logs, metrics and the model checkpoint."""
    t = cfg.train
    rank, world = init_distributed()
    if t.global_batch % (t.micro_batch * world):
        raise ConfigError(f"train.global_batch ({t.global_batch}) must be a multiple of train.micro_batch "
                          f"({t.micro_batch}) x the {world} ranks")
    try:
        run = setup_run(cfg, rank, world, run_dir, resume, stream)
        run_steps(run)
        run.loader.close()
        run.optimizer = None   # before the process group goes (shutdown_distributed)
        return final_report(run)
    finally:
        shutdown_distributed()


def _batches(loader):
    """Micro-batches across epochs, forever (the loader moves to the next epoch by itself)."""
    while True:
        yield from loader


def run_steps(run):
    """Optimizer steps from run.step to train.stop_at (or train.steps), with logging, evaluation and
    checkpoints on their schedules."""
    cfg, t, o = run.cfg, run.cfg.train, run.cfg.optim
    model, optimizer = run.model, run.optimizer
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if t.bf16 else contextlib.nullcontext()
    val = run.splits.get("val", [])
    val = val[:cfg.eval.limit] if cfg.eval.limit else val
    progress = Progress(t.steps, start_step=run.step, stream=run.stream)
    batches = _batches(run.loader)
    last = t.stop_at or t.steps
    window = {"tokens": 0, "images": 0, "time": time.perf_counter()}
    model.train()
    while run.step < last:
        micro = [next(batches) for _ in range(run.accum)]
        total, = sum_over_ranks([sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)], run.world)
        loss_sum, aux_sum = 0.0, None
        for batch in micro:
            with autocast:
                loss, _, aux = model.batch_loss(batch)
            # ZeroAdamW averages the grads over ranks: scale by world so that the sum over ranks
            # is the global batch's token mean, the single-process objective.
            objective = loss * (run.world / max(total, 1))
            if aux is not None:  # a per-micro-batch mean: weigh it by its share of the global batch
                objective = objective + aux / run.accum
                aux_sum = (aux_sum or 0.0) + aux.item() / run.accum
            objective.backward()
            loss_sum += loss.item()
            window["tokens"] += int(batch["attention_mask"].sum())
            window["images"] += batch["images"].shape[0]
        for group, base in zip(optimizer.param_groups, run.base_lrs):
            group["lr"] = lr_at(run.step, t.steps, base, o, run.steps_per_epoch)
        grad_norm, scale = optimizer.clip_scale(o.clip) if o.clip > 0 else (optimizer.grad_norm(), None)
        optimizer.step(grad_scale=scale)
        optimizer.zero_grad()
        run.step += 1
        if t.log_every and (run.step % t.log_every == 0 or run.step == last):
            _log_step(run, progress, window, loss_sum, total, aux_sum, grad_norm)
            window = {"tokens": 0, "images": 0, "time": time.perf_counter()}
        if val and t.eval_every and run.step % t.eval_every == 0 and run.step < t.steps:
            result = evaluate_run(run, val)
            run.log.write({"step": run.step, **eval_row(result)})
            print_eval(result, f"step {run.step}: held-out (val) accuracy", 2, run.stream)
            window["time"] = time.perf_counter()
        if (t.ckpt_every and run.step % t.ckpt_every == 0) or run.step == last:
            checkpoint.save_checkpoint(run.run_dir, run.step, run.recipe, model, optimizer, to_dict(cfg),
                                       {"data": run.loader.state_dict()}, rank=run.rank, world=run.world)


def _log_step(run, progress, window, loss_sum, total, aux_sum, grad_norm):
    """One metrics.jsonl row and progress line: the step's token-mean loss over the global batch,
    lr, grad norm, and throughput since the last logged step."""
    elapsed = time.perf_counter() - window["time"]
    loss_sum, tokens, images = sum_over_ranks([loss_sum, window["tokens"], window["images"]], run.world)
    row = {"step": run.step, "loss": loss_sum / max(total, 1), "lr": run.optimizer.param_groups[0]["lr"],
           "grad_norm": float(grad_norm), "tokens_per_s": tokens / elapsed, "images_per_s": images / elapsed,
           "time": time.perf_counter() - run.started}
    if aux_sum is not None:  # the recipe's auxiliary term (EVE: alignment), mean over ranks
        row["aux_loss"] = sum_over_ranks([aux_sum], run.world)[0] / run.world
    row.update(run.loader.metrics())
    run.log.write(row)
    progress.update(run.step, row["loss"], row["lr"], row["tokens_per_s"], row["images_per_s"])
