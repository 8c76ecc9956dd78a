"""Training checkpoints: run_dir/checkpoints/step_NNNNNN/ holding model.safetensors (the model's
state), optim.safetensors (AdamW moments, master weights, RNG states) and state.json (the resolved
config, step, data position, optimizer hyperparameters, tensor-free state). Each file is written
atomically and state.json last, so a folder with a state.json is complete; `latest` picks it.
Models of adapter recipes (they have `trainable_state_dict`) save only their trained tensors: the
frozen base is rebuilt from its own weights on resume."""
import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from minilvlm.io import atomic_save_safetensors, atomic_write_json


def checkpoint_dir(run_dir, step):
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}"


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


def save_checkpoint(run_dir, step, model, optimizer, config_dict, extra):
    folder = checkpoint_dir(run_dir, step)
    trained_only = hasattr(model, "trainable_state_dict")
    atomic_save_safetensors(model.trainable_state_dict() if trained_only else model.state_dict(),
                            folder / "model.safetensors")
    tensors, optim_meta = _optim_tensors(optimizer)
    tensors["rng.torch"] = torch.get_rng_state()
    atomic_save_safetensors(tensors, folder / "optim.safetensors")
    rng = {"python": _jsonable(random.getstate()), "numpy": _jsonable(np.random.get_state())}
    atomic_write_json({"step": step, "config": config_dict, "optim": optim_meta, "rng": rng, **extra},
                      folder / "state.json")
    return folder


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    return value


def latest(run_dir):
    """The newest complete checkpoint folder of a run, or None."""
    folders = sorted(p.parent for p in (Path(run_dir) / "checkpoints").glob("step_*/state.json"))
    return folders[-1] if folders else None


def read_state(folder):
    return json.loads((Path(folder) / "state.json").read_text())


def load_checkpoint(folder, model, optimizer):
    """Restore model, optimizer and RNG states; returns the state.json dict."""
    folder = Path(folder)
    state = read_state(folder)
    tensors = load_file(folder / "model.safetensors")
    if hasattr(model, "load_trainable_state_dict"):
        model.load_trainable_state_dict(tensors, str(folder / "model.safetensors"))
    else:
        model.load_state_dict(tensors)
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
    torch.set_rng_state(tensors["rng.torch"])
    python_state = state["rng"]["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    kind, keys, pos, has_gauss, gauss = state["rng"]["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    return state
