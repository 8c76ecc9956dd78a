"""Setting up a training run from its config: seeds, the data and tokenizer, the recipe's model
(with the from-scratch tower pretrained first where the recipe asks for it), the loader, the
optimizer, and the state of a resumed run. Everything the step loop (loop.py) and the final report
(report.py) need is in one `Run`."""
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from minilvlm import recipes
from minilvlm.config import RunConfig, to_dict
from minilvlm.data.dataset import SFTDataset
from minilvlm.data.errors import DataError, SkipCounter
from minilvlm.data.loader import ResumableLoader
from minilvlm.data.sampler import ResumableBatchSampler
from minilvlm.device import MODEL_DTYPES
from minilvlm.data.templates import chat_template
from minilvlm.io import atomic_write_json
from minilvlm.recipes.base import Recipe
from minilvlm.recipes.run_data import load_records, load_tokenizer
from minilvlm.train import checkpoint, vision_pretrain
from minilvlm.train.logging import MetricsLog
from minilvlm.train.precision import StepPrecision
from minilvlm.train.sharding import make_optimizer, shard_model, uses_fsdp


@dataclass
class Run:
    cfg: RunConfig
    recipe: Recipe
    device: torch.device          # where the model, its batches and the optimizer state live
    rank: int
    world: int
    run_dir: Path
    stream: object                # where progress goes (devnull on ranks other than 0)
    started: float                # time.perf_counter() at the start
    splits: dict                  # {split: records}
    tokenizer: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loader: ResumableLoader
    log: MetricsLog
    base_lrs: list                # each param group's peak lr (group["lr"] follows the schedule)
    precision: StepPrecision      # autocast and fp16 loss scaling (train.precision)
    flops_per_token: float        # for MFU: 6 x parameters (PaLM's convention, attention left out)
    step: int = 0                 # optimizer steps done
    resumed_from: Path = None
    summary: dict = field(default_factory=dict)   # what the final report adds to summary.json

    @property
    def accum(self):
        """Micro-batches per rank and optimizer step."""
        return self.cfg.train.global_batch // (self.cfg.train.micro_batch * self.world)

    @property
    def steps_per_epoch(self):
        return len(self.loader.dataset) / self.cfg.train.global_batch


def _seed(t):
    if t.threads:
        torch.set_num_threads(t.threads)
    if t.deterministic:
        torch.use_deterministic_algorithms(True)
    random.seed(t.seed)
    np.random.seed(t.seed)
    torch.manual_seed(t.seed)


def _data(cfg, rank, world, run_dir, skips):
    """(splits, tokenizer). Rank 0 first: it generates the demo set and builds the tokenizer file on
    first use; the other ranks then read both (building them concurrently raced on tokenizer.json).
    Records skipped under data.on_error = "skip" are counted in `skips`."""
    if rank == 0:
        splits = load_records(cfg, run_dir, skips)
        tokenizer = load_tokenizer(cfg, run_dir, splits["train"])
    if world > 1:
        torch.distributed.barrier()
    if rank != 0:
        splits = load_records(cfg, run_dir, skips)
        tokenizer = load_tokenizer(cfg, run_dir, splits["train"])
    return splits, tokenizer


def _pretrain_tower(recipe, model, splits, cfg, world, stream):
    """The from-scratch tower's pretraining (minilvlm/train/vision_pretrain.py), or None with a note
    when the recipe skips it. Every rank runs the same steps; rank 0's result is broadcast so that
    the ranks start the recipe from one tower whatever their thread counts did to the rounding."""
    reason = recipe.skip_tower_pretraining(cfg)
    if reason:
        print(f"vision pretraining skipped: {reason}", file=stream)
        return None
    result = vision_pretrain.pretrain_vision(model, splits["train"], splits.get("val", []), cfg,
                                             recipe.image_config(cfg), stream)
    if world > 1:
        for tensor in model.vision.state_dict().values():
            torch.distributed.broadcast(tensor, src=0)
    return result


def _loader(cfg, recipe, model, records, tokenizer, rank, world, device, skips):
    dataset = SFTDataset(records, tokenizer, chat_template(cfg.data.template), model.config.image_tokens,
                         cfg.data.max_len, image=recipe.image_config(cfg), on_error=cfg.data.on_error, skips=skips)
    if not len(dataset):
        raise DataError(f"no training records are left to train on ({skips.total} skipped: {dict(skips.counts)})",
                        reason="no_records")
    sampler = ResumableBatchSampler(dataset.lengths, cfg.train.micro_batch, rank=rank, world_size=world,
                                    seed=cfg.train.seed)
    # Batches from worker processes land in pinned memory, so their copy to a GPU can overlap.
    pin = device.type == "cuda" and cfg.data.num_workers > 0
    return ResumableLoader(dataset, sampler, tokenizer.pad_id, num_workers=cfg.data.num_workers, pin_memory=pin)


def setup_run(cfg, device, rank, world, run_dir=None, resume=False, stream=None):
    """Everything a run needs before its first step (or the first step after a resume). The model
    is built on the CPU (its from-scratch init draws from the CPU generator, so a run starts from
    the same weights on every device) with its pretrained weights, then moved to `device`."""
    stream = (stream or sys.stderr) if rank == 0 else open(os.devnull, "w")
    run_dir = Path(run_dir or cfg.train.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _seed(cfg.train)
    started = time.perf_counter()
    recipe = recipes.of(cfg)
    skips = SkipCounter()
    splits, tokenizer = _data(cfg, rank, world, run_dir, skips)
    model = recipe.build_model(cfg, tokenizer).to(device)
    # The data set is tokenized before any tower pretraining: a record or template problem shows at once.
    loader = _loader(cfg, recipe, model, splits["train"], tokenizer, rank, world, device, skips)
    summary = {}
    if cfg.train.vision_pretrain_steps and not resume:   # a resumed run's tower is in its checkpoint
        tower = _pretrain_tower(recipe, model, splits, cfg, world, stream)
        if tower is not None:
            summary["vision_pretrain"] = tower
    recipe.set_stage(model, cfg)
    model.lm.activation_checkpointing = cfg.train.activation_checkpointing
    if cfg.train.precision in MODEL_DTYPES:   # pure bf16: cast once, before sharding and the optimizer
        model.to(MODEL_DTYPES[cfg.train.precision])
    fsdp = uses_fsdp(cfg, world)
    if fsdp:
        shard_model(model, cfg)
    optimizer = make_optimizer(cfg, model, world)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    step, scaler_state, resume_from = 0, None, None
    if resume:
        resume_from, step, scaler_state = _resume(run_dir, recipe, model, optimizer, loader, rank, world, device, stream)
    if rank == 0:
        atomic_write_json(to_dict(cfg), run_dir / "config.json")
    log = MetricsLog(run_dir / "metrics.jsonl" if rank == 0 else None, resume_step=step if resume_from else None,
                     stream=stream, tensorboard=run_dir / "tensorboard" if cfg.train.tensorboard else None)
    flops_per_token = 6.0 * sum(p.numel() for p in model.parameters())
    run = Run(cfg, recipe, device, rank, world, run_dir, stream, started, splits, tokenizer, model, optimizer, loader,
              log, base_lrs, StepPrecision(cfg.train.precision, device, scaler_state, autocast=not fsdp),
              flops_per_token, step,
              resume_from, summary)
    _print_banner(run)
    return run


def _resume(run_dir, recipe, model, optimizer, loader, rank, world, device, stream):
    """(checkpoint folder, step, loss-scaler state) of the newest checkpoint that loads (a damaged one
    is skipped with a warning: minilvlm.train.checkpoint.resume_latest)."""
    folder, state, notes = checkpoint.resume_latest(run_dir, recipe, model, optimizer, rank, world, device, stream)
    try:
        loader.load_state_dict(state["data"])
    except (KeyError, TypeError, ValueError) as err:
        raise checkpoint.CheckpointError(f"{folder / 'state.json'}: damaged data position ({err!r})") from None
    print(f"resumed from {folder} at step {state['step']}", file=stream)
    for note in notes:
        print(f"note: {note}", file=stream)
    return folder, state["step"], state.get("loss_scaler")


def _print_banner(run):
    t, model = run.cfg.train, run.model
    n_params = sum(p.numel() for p in model.parameters())
    n_trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    run.summary.update(params=n_params, trained_params=n_trained)   # comparisons report them (curation/compare.py)
    ranks = f" x {run.world} ranks" if run.world > 1 else ""
    print(f"run {run.run_dir}: {len(run.loader.dataset)} training samples, vocab {run.tokenizer.vocab_size}, model "
          f"{n_params / 1e6:.2f}M params ({n_trained / 1e6:.2f}M trained), {t.steps} steps of "
          f"{t.global_batch} ({run.accum} x {t.micro_batch}{ranks}), "
          f"{run.steps_per_epoch:.0f} steps per epoch", file=run.stream)
