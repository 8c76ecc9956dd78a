"""The training loop: gradient accumulation to a global batch, autocast and loss scaling by
train.precision, clipping, a per-step lr schedule, periodic evaluation and checkpoints. Run setup
is in run.py, the final evaluation and summary in report.py.

Nothing in a step waits for the device except at a logged step: losses and the grad norm stay on
the device and are read back together, once (`_log_step`). Token counts come from the batches'
CPU copies before they move."""
import sys
import time

import torch

from minilvlm.config import ConfigError, to_dict
from minilvlm.data.loader import to_device
from minilvlm.device import DeviceError, local_rank, resolve_device
from minilvlm.eval.report import print_eval
from minilvlm.optim.schedule import lr_at
from minilvlm.train import checkpoint
from minilvlm.train.distributed import init_distributed, shutdown_distributed, sum_over_ranks
from minilvlm.train.logging import Progress, step_metrics
from minilvlm.train.report import eval_row, evaluate_run, final_report
from minilvlm.train.run import setup_run


def train(cfg, run_dir=None, resume=False, stream=None, overwrite=False):
    """Run (or resume) training as configured; returns the final summary. Under torchrun every rank
    calls this: the data is sharded per rank, ZeroAdamW shards the optimizer state, and rank 0
    alone writes logs, metrics and the model checkpoint. A run folder that is not empty needs
    resume (go on) or overwrite (clear it); resuming a finished run returns its summary at once."""
    t = cfg.train
    try:
        device = resolve_device(t.device, local_rank())
    except DeviceError as err:
        raise ConfigError(f"train.device: {err}") from None
    if device.type == "meta":
        raise ConfigError("train.device = 'meta' holds no data to train on; run `tools/train.py CONFIG --dry-run`, "
                          "which runs one step on the meta device")
    rank, world = init_distributed(device)
    if t.global_batch % (t.micro_batch * world):
        raise ConfigError(f"train.global_batch ({t.global_batch}) must be a multiple of train.micro_batch "
                          f"({t.micro_batch}) x the {world} ranks")
    try:
        done = _prepare_run_dir(cfg, run_dir, resume, overwrite, rank, world, stream)
        if done is not None:
            return done
        run = setup_run(cfg, device, rank, world, run_dir, resume, stream)
        run_steps(run)
        run.loader.close()
        run.optimizer = None   # before the process group goes (shutdown_distributed)
        return final_report(run)
    finally:
        shutdown_distributed()


def _prepare_run_dir(cfg, run_dir, resume, overwrite, rank, world, stream):
    """Refuse a run folder that is not empty unless resume or overwrite; the summary of a resumed run
    that already finished (nothing to do), else None."""
    run_dir = run_dir or cfg.train.run_dir
    checkpoint.prepare_run_dir(run_dir, resume, overwrite, rank, world)
    done = checkpoint.completed_summary(run_dir, cfg) if resume else None
    if done is not None:
        print(f"the run in {run_dir} is complete ({done['step']} of {cfg.train.steps} steps, final evaluation "
              f"done); nothing to resume. Raise train.steps to train further.", file=stream or sys.stderr)
    return done


def _batches(loader):
    """Micro-batches across epochs, forever (the loader moves to the next epoch by itself)."""
    while True:
        yield from loader


def run_steps(run):
    """Optimizer steps from run.step to train.stop_at (or train.steps), with logging, evaluation and
    checkpoints on their schedules."""
    cfg, t, o = run.cfg, run.cfg.train, run.cfg.optim
    model, optimizer, precision = run.model, run.optimizer, run.precision
    val = run.splits.get("val", [])
    val = val[:cfg.eval.limit] if cfg.eval.limit else val
    progress = Progress(t.steps, start_step=run.step, stream=run.stream)
    batches = _batches(run.loader)
    last = t.stop_at or t.steps
    window = _Window()
    guard = checkpoint.NonFiniteGuard(t.nonfinite_limit, run.device, precision.scaler is not None, run.world)
    model.train()
    while run.step < last:
        micro = [next(batches) for _ in range(run.accum)]
        total, = sum_over_ranks([sum(b["n_targets"] for b in micro)], run.world, run.device)
        window.count(micro)
        loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
        aux_sum = None
        for batch in (to_device(b, run.device) for b in micro):
            with precision.autocast():
                loss, _, aux = model.batch_loss(batch)
            # ZeroAdamW averages the grads over ranks: scale by world so that the sum over ranks
            # is the global batch's token mean, the single-process objective.
            objective = loss * (run.world / max(total, 1))
            if aux is not None:  # a per-micro-batch mean: weigh it by its share of the global batch
                objective = objective + aux / run.accum
                aux_sum = aux.detach().double() / run.accum + (0.0 if aux_sum is None else aux_sum)
            precision.backward(objective)
            loss_sum += loss.detach()
        for group, base in zip(optimizer.param_groups, run.base_lrs):
            group["lr"] = lr_at(run.step, t.steps, base, o, run.steps_per_epoch)
        grad_norm = precision.step(optimizer, o.clip)
        optimizer.zero_grad()
        guard.observe(loss_sum, grad_norm)
        run.step += 1
        if t.log_every and (run.step % t.log_every == 0 or run.step == last):
            guard.check(run.step)
            _log_step(run, progress, window, loss_sum, total, aux_sum, grad_norm)
        if val and t.eval_every and run.step % t.eval_every == 0 and run.step < t.steps:
            result = evaluate_run(run, val)
            run.log.write({"step": run.step, **eval_row(result)})
            print_eval(result, f"step {run.step}: held-out (val) accuracy", 2, run.stream)
            window.restart()
        if ((t.ckpt_every and run.step % t.ckpt_every == 0) or run.step == last) and _finite_since_checkpoint(run, guard):
            checkpoint.save_checkpoint(run.run_dir, run.step, run.recipe, model, optimizer, to_dict(cfg),
                                       {"data": run.loader.state_dict(), **precision.state_dict()},
                                       rank=run.rank, world=run.world, device=run.device)


def _finite_since_checkpoint(run, guard):
    """Whether the steps since the last checkpoint were all finite (else this one is not written, and
    the last good one stays the latest); stops the run at train.nonfinite_limit."""
    if guard.checkpoint_ok(run.step):
        return True
    print(f"warning: step {run.step}: no checkpoint written, a step since the last one had a NaN or infinite loss",
          file=run.stream)
    return False


class _Window:
    """Tokens, images and wall time since the last logged step (for throughput), counted on the
    batches' CPU copies."""

    def __init__(self):
        self.restart()

    def restart(self):
        self.tokens, self.images, self.steps, self.time = 0, 0, 0, time.perf_counter()

    def count(self, micro):
        self.tokens += sum(int(b["attention_mask"].sum()) for b in micro)
        self.images += sum(b["images"].shape[0] for b in micro)
        self.steps += 1


def _log_step(run, progress, window, loss_sum, total, aux_sum, grad_norm):
    """One metrics.jsonl row and progress line: the step's token-mean loss over the global batch,
    lr, grad norm, throughput and memory since the last logged step. The device values are read
    back in one transfer."""
    elapsed = time.perf_counter() - window.time
    values = [loss_sum, grad_norm.to(loss_sum), aux_sum if aux_sum is not None else loss_sum.new_zeros(())]
    loss, norm, aux = torch.stack([v.reshape(()).to(torch.float64) for v in values]).tolist()
    loss, tokens, images, aux = sum_over_ranks([loss, window.tokens, window.images, aux], run.world, run.device)
    row = {"step": run.step, "loss": loss / max(total, 1), "lr": run.optimizer.param_groups[0]["lr"],
           "grad_norm": norm, "tokens_per_s": tokens / elapsed, "images_per_s": images / elapsed,
           "time": time.perf_counter() - run.started}
    if aux_sum is not None:  # the recipe's auxiliary term (EVE: alignment), mean over ranks
        row["aux_loss"] = aux / run.world
    row.update(step_metrics(run.device, run.flops_per_token, tokens / elapsed, run.world, run.cfg.train.peak_tflops))
    row.update(run.precision.metrics())
    row.update(run.loader.metrics())
    run.log.write(row)
    progress.update(run.step, row["loss"], row["lr"], row["tokens_per_s"], row["images_per_s"])
    window.restart()
