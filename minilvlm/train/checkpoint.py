"""Training checkpoints: run_dir/checkpoints/step_NNNNNN/ holding model.safetensors (the model's
state), optim.safetensors (AdamW moments, master weights, RNG states) and state.json (the resolved
config, step, data position, optimizer hyperparameters, tensor-free state). Each file is written
atomically and state.json last, so a folder with a state.json is complete; `latest` picks it.

Under torchrun (world size > 1) the optimizer state is ZeroAdamW's sharded checkpoint in optim/
(one file per rank plus a manifest; it re-slices on load at another world size, and consolidates
for a single process), each rank's RNG states go to rank_R.safetensors / rank_R.json, and rank 0
writes model.safetensors and, after a barrier, state.json.

What model.safetensors holds is the recipe's choice (`Recipe.checkpoint_state`): the whole model,
or for the mma recipe only the trained adapters, whose frozen base is rebuilt from its own weights
on resume. The folder layout is minilvlm/recipes/run_folder.py's."""
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from minilvlm.io import (
    WeightsError,
    atomic_save_safetensors,
    atomic_write_json,
    load_safetensors,
    read_json_object,
    read_safetensors_header,
    remove_stale_temp_files,
)
from minilvlm.optim import consolidate, load_sharded, save_sharded
from minilvlm.recipes.run_folder import (
    CheckpointError,
    checkpoint_dir,
    complete_checkpoints,
    latest,
    read_model_file,
    read_state,
)
from minilvlm.train import dcp
from minilvlm.train.distributed import sum_over_ranks


class TrainingError(RuntimeError):
    """A run that cannot go on (a loss that stays NaN or infinite), with what to do about it."""


def _optim_tensors(optimizer):
    state = optimizer.state_dict()
    tensors, steps = {}, {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if key == "step":
                steps[str(index)] = float(value)
            else:
                tensors[f"state.{index}.{key}"] = value
    groups = [{k: v for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"steps": steps, "param_groups": groups}


def _rng_state():
    return {"python": _jsonable(random.getstate()), "numpy": _jsonable(np.random.get_state())}


def _set_rng_state(rng):
    python_state = rng["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    kind, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))


def _generator_tensors(device):
    """torch's generator states: the CPU's always, and the run's CUDA device's when it has one
    (dropout on a GPU draws from it)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    return tensors


def _set_generators(tensors, device):
    """Restore the generator states a checkpoint holds; returns notes on what does not carry over
    between a CPU and a GPU run (nothing is dropped silently)."""
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
        return []
    if "rng.cuda" in tensors:
        return [f"the checkpoint's CUDA generator state (a GPU run) has no use on {device}; the run goes on "
                f"with the CPU generator's state only"]
    if device.type == "cuda":
        return ["the checkpoint holds no CUDA generator state (it was written on the CPU); the CUDA "
                "generator goes on from its seed"]
    return []


def save_checkpoint(run_dir, step, recipe, model, optimizer, config_dict, extra, rank=0, world=1, device=None):
    """Collective under torchrun: every rank calls it."""
    folder = checkpoint_dir(run_dir, step)
    device = device or torch.device("cpu")
    if world == 1:
        atomic_save_safetensors(recipe.checkpoint_state(model), folder / "model.safetensors")
        tensors, optim_meta = _optim_tensors(optimizer)
        tensors.update(_generator_tensors(device))
        atomic_save_safetensors(tensors, folder / "optim.safetensors")
        atomic_write_json({"step": step, "config": config_dict, "optim": optim_meta, "rng": _rng_state(),
                           **extra}, folder / "state.json")
        return folder
    if dcp.uses_dcp(optimizer):   # FSDP: model and optimizer shards through torch.distributed.checkpoint
        dcp.save(folder, recipe, model, optimizer)
    else:
        if rank == 0:
            atomic_save_safetensors(recipe.checkpoint_state(model), folder / "model.safetensors")
        save_sharded(optimizer, folder / "optim")  # ends with a barrier
    atomic_save_safetensors(_generator_tensors(device), folder / f"rank_{rank}.safetensors")
    atomic_write_json(_rng_state(), folder / f"rank_{rank}.json")
    torch.distributed.barrier()
    if rank == 0:
        atomic_write_json({"step": step, "config": config_dict, "world_size": world, **extra},
                          folder / "state.json")
    torch.distributed.barrier()  # nobody goes on (or dies) believing a checkpoint is complete before it is
    return folder


def _restore_rank_generators(folder, state, rank, world, device):
    """A sharded checkpoint's RNG states of this rank, when it was written at this world size."""
    if state.get("world_size") == world and (folder / f"rank_{rank}.json").is_file():
        _restore_rng(read_json_object(folder / f"rank_{rank}.json", CheckpointError), folder / f"rank_{rank}.json")
        return _set_generators(load_safetensors(folder / f"rank_{rank}.safetensors"), device)
    return [f"the checkpoint was written at {state.get('world_size')} ranks: the generators of this run at "
            f"{world} start from the seed"]


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    return value


def _required(state, path, *keys):
    """state[k1][k2]... of a checkpoint's JSON, or a CheckpointError naming the file and the entry."""
    value = state
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise CheckpointError(f"{path}: no {'.'.join(keys)!r} entry; the file is damaged or not a checkpoint of this "
                                  f"kind of run")
        value = value[key]
    return value


def _optim_state(folder, state, optimizer, device):
    """The single-process optimizer state (optim.safetensors + state.json's optim entry), every
    moment present with its parameter's shape."""
    path = folder / "optim.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path} not found: the checkpoint is incomplete")
    tensors = load_safetensors(path)
    steps = _required(state, folder / "state.json", "optim", "steps")
    groups = _required(state, folder / "state.json", "optim", "param_groups")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if not isinstance(steps, dict) or not isinstance(groups, list) or len(groups) != len(optimizer.param_groups):
        raise CheckpointError(f"{folder / 'state.json'}: its optimizer entry does not fit this model's "
                              f"{len(optimizer.param_groups)} parameter groups")
    optim_state, problems = {}, []
    for index, step in steps.items():
        if not str(index).isdigit() or int(index) >= len(params) or not isinstance(step, (int, float)):
            problems.append(f"step entry {index!r}: {step!r}")
            continue
        entry = {"step": torch.tensor(float(step))}
        for key in ("exp_avg", "exp_avg_sq", "master"):
            name = f"state.{index}.{key}"
            if name in tensors and tensors[name].shape == params[int(index)].shape:
                entry[key] = tensors[name].to(device)
            elif key != "master" or name in tensors:
                problems.append(f"{name}: {'missing' if name not in tensors else 'wrong shape'}")
        optim_state[int(index)] = entry
    if problems:
        raise CheckpointError(f"{path} does not fit this model's optimizer: {problems[:8]}")
    return {"state": optim_state, "param_groups": groups}, tensors


def _load_sharded_optimizer(folder, optimizer, world):
    """ZeroAdamW's sharded state (optim/), every file's header checked first."""
    for path in sorted((folder / "optim").glob("*.safetensors")):
        read_safetensors_header(path)
    try:
        if world > 1:
            load_sharded(optimizer, folder / "optim")
        else:
            optimizer.load_state_dict(consolidate(folder / "optim"))
    except (OSError, ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
        raise CheckpointError(f"{folder / 'optim'}: a damaged or incomplete sharded optimizer state: {err}") from None


def _restore_rng(rng, path):
    try:
        _set_rng_state(rng)
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise CheckpointError(f"{path}: damaged RNG state ({type(err).__name__}: {err})") from None


def load_checkpoint(folder, recipe, model, optimizer, rank=0, world=1, device=None):
    """Restore model, optimizer and RNG states; returns (the state.json dict, notes on RNG states
    that do not carry over). A checkpoint written at one world size loads at another; the RNG
    states are restored only at the same world size. A missing or damaged file is a CheckpointError
    (or a WeightsError for a damaged safetensors file) naming it."""
    folder = Path(folder)
    device = device or torch.device("cpu")
    state = read_state(folder)
    _required(state, folder / "state.json", "data", "sampler")
    if dcp.is_dcp(folder):   # an FSDP run's shards (DCP reshards them to this world size)
        dcp.load_into(folder, recipe, model, optimizer)
        return state, _restore_rank_generators(folder, state, rank, world, device)
    try:
        recipe.load_checkpoint_state(model, read_model_file(folder, recipe, model), folder / "model.safetensors")
    except (ValueError, RuntimeError) as err:
        if isinstance(err, (CheckpointError, WeightsError)):
            raise
        raise CheckpointError(str(err)) from None
    if (folder / "optim").is_dir():
        _load_sharded_optimizer(folder, optimizer, world)
        return state, _restore_rank_generators(folder, state, rank, world, device)
    if world > 1:
        raise CheckpointError(f"{folder} was written by a single-process run; resuming it under torchrun "
                              f"needs a sharded optimizer state. Resume it in one process.")
    optim_state, tensors = _optim_state(folder, state, optimizer, device)
    try:
        optimizer.load_state_dict(optim_state)
    except (ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"{folder / 'optim.safetensors'} does not fit this model's optimizer: {err}") from None
    _restore_rng(_required(state, folder / "state.json", "rng"), folder / "state.json")
    if "rng.torch" not in tensors:
        raise CheckpointError(f"{folder / 'optim.safetensors'}: no rng.torch tensor; the checkpoint is damaged")
    return state, _set_generators(tensors, device)


def resume_latest(run_dir, recipe, model, optimizer, rank=0, world=1, device=None, stream=None):
    """Load the newest complete checkpoint that loads, going back one checkpoint at a time past any that
    is damaged, and saying so. Under torchrun every rank takes the same one. Returns (folder, state,
    notes); a CheckpointError when none loads."""
    failures = []
    for folder in complete_checkpoints(run_dir):
        try:
            state, notes = load_checkpoint(folder, recipe, model, optimizer, rank, world, device)
            error = None
        except (CheckpointError, WeightsError) as err:
            error = err
        failed_somewhere, = sum_over_ranks([float(error is not None)], world, device or "cpu")
        if not failed_somewhere:
            return folder, state, notes
        why = str(error) if error is not None else "it failed to load on another rank"
        failures.append(f"{folder.name}: {why}")
        print(f"warning: checkpoint {folder} is damaged and is skipped ({why}); trying the one before it",
              file=stream or sys.stderr)
    if not failures:
        raise CheckpointError(f"--resume {run_dir}: no complete checkpoint under {Path(run_dir) / 'checkpoints'}")
    raise CheckpointError(f"--resume {run_dir}: no checkpoint loads; " + "; ".join(failures))


RUN_FILES = ("config.json", "metrics.jsonl", "checkpoints", "summary.json")   # what makes a folder hold a run


def prepare_run_dir(run_dir, resume, overwrite, rank=0, world=1):
    """Before a run writes anything: a folder that holds a run (config.json, metrics.jsonl,
    checkpoints/ or summary.json) is refused unless --resume (go on) or --overwrite (clear it first),
    so two runs never mix in one folder; --overwrite clears nothing else. Then the temp files of a
    process killed mid-write are removed (minilvlm.io's atomic writes leave `.NAME.*.tmp`)."""
    run_dir = Path(run_dir)
    present = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    holds_run = [name for name in RUN_FILES if name in present]
    if holds_run and not (resume or overwrite):
        raise CheckpointError(f"train.run_dir {run_dir} holds a run ({', '.join(holds_run)}); continue it with "
                              f"--resume {run_dir}, start it anew with --overwrite (deletes it), or choose another "
                              f"train.run_dir")
    if present and overwrite and not holds_run:
        raise CheckpointError(f"--overwrite: {run_dir} does not look like a run folder (no config.json, checkpoints/ "
                              f"or metrics.jsonl); it is left alone. Choose another train.run_dir")
    if world > 1:
        torch.distributed.barrier()   # every rank has looked before rank 0 changes anything
    if rank == 0 and overwrite and holds_run:
        for path in run_dir.iterdir():
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    if rank == 0 and run_dir.is_dir():
        remove_stale_temp_files(run_dir)
    if world > 1:
        torch.distributed.barrier()


def completed_summary(run_dir, cfg):
    """The summary.json of a run that has finished all of cfg.train.steps (its final evaluation
    included), or None: resuming it has nothing to do."""
    path = Path(run_dir) / "summary.json"
    newest = latest(run_dir)
    if not path.is_file() or newest is None or int(newest.name[5:]) < cfg.train.steps:
        return None
    try:
        summary = read_json_object(path, CheckpointError)
    except CheckpointError:
        return None   # written when the run ends: damaged means the end did not finish; run it again
    return summary if isinstance(summary.get("step"), int) and summary["step"] >= cfg.train.steps else None


class NonFiniteGuard:
    """Counts the optimizer steps whose loss (or, outside fp16's loss scaling, which skips such steps
    itself, grad norm) is NaN or infinite, on the device, without a wait per step. `check` (at logged
    steps and before checkpoints, where the loop reads values back anyway) stops the run with a
    TrainingError at train.nonfinite_limit such steps; `checkpoint_ok` says whether the steps since
    the last checkpoint were all finite, so that a diverged model never becomes the latest checkpoint."""

    def __init__(self, limit, device, scaled=False, world=1):
        self.limit, self.device, self.scaled, self.world = limit, device, scaled, world
        self.bad = torch.zeros((), dtype=torch.float64, device=device)
        self.at_last_checkpoint = 0

    def observe(self, loss_sum, grad_norm):
        bad = ~torch.isfinite(loss_sum)
        if not self.scaled:
            bad = bad | ~torch.isfinite(grad_norm.to(loss_sum.device))
        self.bad += bad.to(self.bad.dtype)

    def check(self, step):
        """The number of non-finite steps so far (summed over ranks); TrainingError at the limit."""
        count, = sum_over_ranks([float(self.bad)], self.world, self.device)
        if count >= self.limit:
            raise TrainingError(f"step {step}: {int(count)} step(s) had a NaN or infinite loss or grad norm "
                                f"(train.nonfinite_limit = {self.limit}); the run stops and its last checkpoint "
                                f"stays the latest. Lower optim.lr, check the data, or use train.precision = "
                                f"\"bf16-autocast\" instead of fp16")
        return count

    def checkpoint_ok(self, step):
        count = self.check(step)
        ok = count == self.at_last_checkpoint
        self.at_last_checkpoint = count
        return ok
