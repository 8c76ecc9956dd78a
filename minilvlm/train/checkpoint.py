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
import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from minilvlm.io import atomic_save_safetensors, atomic_write_json
from minilvlm.optim import consolidate, load_sharded, save_sharded
from minilvlm.recipes.run_folder import checkpoint_dir, read_state
from minilvlm.train import dcp


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
        _set_rng_state(json.loads((folder / f"rank_{rank}.json").read_text()))
        return _set_generators(load_file(folder / f"rank_{rank}.safetensors"), device)
    return [f"the checkpoint was written at {state.get('world_size')} rank(s): the generators of this run at "
            f"{world} start from the seed"]


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    return value


def load_checkpoint(folder, recipe, model, optimizer, rank=0, world=1, device=None):
    """Restore model, optimizer and RNG states; returns (the state.json dict, notes on RNG states
    that do not carry over). A checkpoint written at one world size loads at another; the RNG
    states are restored only at the same world size."""
    folder = Path(folder)
    device = device or torch.device("cpu")
    state = read_state(folder)
    if dcp.is_dcp(folder):
        dcp.load_into(folder, recipe, model, optimizer)
        return state, _restore_rank_generators(folder, state, rank, world, device)
    recipe.load_checkpoint_state(model, load_file(folder / "model.safetensors"), folder / "model.safetensors")
    if (folder / "optim").is_dir():
        if world > 1:
            load_sharded(optimizer, folder / "optim")
        else:
            optimizer.load_state_dict(consolidate(folder / "optim"))
        return state, _restore_rank_generators(folder, state, rank, world, device)
    if world > 1:
        raise RuntimeError(f"{folder} was written by a single-process run; resuming it under torchrun "
                           f"needs a sharded optimizer state. Resume it in one process.")
    tensors = load_file(folder / "optim.safetensors")
    optim_state = {}
    for index, step in state["optim"]["steps"].items():
        entry = {"step": torch.tensor(step)}
        for key in ("exp_avg", "exp_avg_sq", "master"):
            name = f"state.{index}.{key}"
            if name in tensors:
                entry[key] = tensors[name].to(device)
        optim_state[int(index)] = entry
    optimizer.load_state_dict({"state": optim_state, "param_groups": state["optim"]["param_groups"]})
    _set_rng_state(state["rng"])
    return state, _set_generators(tensors, device)
