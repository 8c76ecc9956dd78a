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


def _set_rng_state(rng, torch_state):
    torch.set_rng_state(torch_state)
    python_state = rng["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    kind, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))


def save_checkpoint(run_dir, step, recipe, model, optimizer, config_dict, extra, rank=0, world=1):
    """Collective under torchrun: every rank calls it."""
    folder = checkpoint_dir(run_dir, step)
    if world == 1:
        atomic_save_safetensors(recipe.checkpoint_state(model), folder / "model.safetensors")
        tensors, optim_meta = _optim_tensors(optimizer)
        tensors["rng.torch"] = torch.get_rng_state()
        atomic_save_safetensors(tensors, folder / "optim.safetensors")
        atomic_write_json({"step": step, "config": config_dict, "optim": optim_meta, "rng": _rng_state(),
                           **extra}, folder / "state.json")
        return folder
    if rank == 0:
        atomic_save_safetensors(recipe.checkpoint_state(model), folder / "model.safetensors")
    save_sharded(optimizer, folder / "optim")  # ends with a barrier
    atomic_save_safetensors({"rng.torch": torch.get_rng_state()}, folder / f"rank_{rank}.safetensors")
    atomic_write_json(_rng_state(), folder / f"rank_{rank}.json")
    torch.distributed.barrier()
    if rank == 0:
        atomic_write_json({"step": step, "config": config_dict, "world_size": world, **extra},
                          folder / "state.json")
    torch.distributed.barrier()  # nobody goes on (or dies) believing a checkpoint is complete before it is
    return folder


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    return value


def load_checkpoint(folder, recipe, model, optimizer, rank=0, world=1):
    """Restore model, optimizer and RNG states; returns the state.json dict. A checkpoint written
    at one world size loads at another; the RNG states are restored only at the same world size."""
    folder = Path(folder)
    state = read_state(folder)
    recipe.load_checkpoint_state(model, load_file(folder / "model.safetensors"), folder / "model.safetensors")
    if (folder / "optim").is_dir():
        if world > 1:
            load_sharded(optimizer, folder / "optim")
        else:
            optimizer.load_state_dict(consolidate(folder / "optim"))
        if state.get("world_size") == world and (folder / f"rank_{rank}.json").is_file():
            rng = json.loads((folder / f"rank_{rank}.json").read_text())
            _set_rng_state(rng, load_file(folder / f"rank_{rank}.safetensors")["rng.torch"])
        return state
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
                entry[key] = tensors[name]
        optim_state[int(index)] = entry
    optimizer.load_state_dict({"state": optim_state, "param_groups": state["optim"]["param_groups"]})
    _set_rng_state(state["rng"], tensors["rng.torch"])
    return state
