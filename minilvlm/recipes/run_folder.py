"""The layout of a run folder, shared by the trainer that writes it and the tools that read it:

    RUN/config.json                       the resolved config
    RUN/tokenizer.json                    the tokenizer a demo run built (others name theirs in the config)
    RUN/checkpoints/step_NNNNNN/          one checkpoint: model.safetensors (what the recipe's
                                          checkpoint_state holds), state.json (written last: a folder
                                          with one is complete), and the trainer's optimizer and RNG
                                          files (minilvlm/train/checkpoint.py); an FSDP run writes
                                          its model and optimizer shards into dcp/ instead
                                          (torch.distributed.checkpoint, minilvlm/train/dcp.py)

A soup (tools/soup.py) is a folder holding model.safetensors and state.json, like a checkpoint.
Everything read from these folders is checked: a damaged file is a CheckpointError (or the
WeightsError of minilvlm.io for a damaged safetensors file) that names the file."""
import re
from pathlib import Path

import torch.distributed.checkpoint as dcp

from minilvlm.io import load_safetensors, read_json_object


class CheckpointError(ValueError):
    """A checkpoint (or run) folder whose files are missing or damaged, naming the file."""


def checkpoint_dir(run_dir, step):
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}"


def complete_checkpoints(run_dir):
    """The complete checkpoint folders of a run (those holding state.json), newest first."""
    folders = [p.parent for p in (Path(run_dir) / "checkpoints").glob("step_*/state.json")
               if re.fullmatch(r"step_\d+", p.parent.name)]
    return sorted(folders, key=lambda p: int(p.name[5:]), reverse=True)


def latest(run_dir):
    """The newest complete checkpoint folder of a run, or None."""
    folders = complete_checkpoints(run_dir)
    return folders[0] if folders else None


def read_state(folder):
    """A checkpoint's state.json: a JSON object with an integer step and a config object."""
    path = Path(folder) / "state.json"
    state = read_json_object(path, CheckpointError)
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{path}: 'step' must be a non-negative integer, got {step!r}")
    if "config" in state and not isinstance(state["config"], dict):
        raise CheckpointError(f"{path}: 'config' must be an object, got {type(state['config']).__name__}")
    return state


def has_model(folder):
    """Whether a checkpoint folder holds model weights in either format."""
    folder = Path(folder)
    return (folder / "model.safetensors").is_file() or (folder / "dcp" / ".metadata").is_file()


def read_model_tensors(folder, template):
    """The model tensors of a checkpoint, for `template` (a {name: tensor} of the right shapes and
    dtypes, such as the recipe's checkpoint_state of a freshly built model): model.safetensors with
    its header and dtypes checked against it, or, from an FSDP run's dcp/ shards, the full tensors
    gathered in this one process."""
    folder = Path(folder)
    path = folder / "model.safetensors"
    if path.is_file():
        return load_safetensors(path, expected=template)
    if not (folder / "dcp" / ".metadata").is_file():
        raise CheckpointError(f"{path} not found (nor an FSDP run's dcp/ folder): the checkpoint is incomplete")
    state = {"model": {k: v.clone() for k, v in template.items()}}
    dcp.load(state, checkpoint_id=str(folder / "dcp"), no_dist=True)
    return state["model"]


def read_model_file(folder, recipe, model):
    """The tensors of a checkpoint of `model` (read_model_tensors with what the recipe's checkpoints hold)."""
    return read_model_tensors(folder, recipe.checkpoint_state(model))
