"""Checkpoints of FSDP runs through torch.distributed.checkpoint (DCP), the engine's own format:
each rank writes its shards of the model (what the recipe's checkpoint_state holds) and of the
optimizer state into checkpoints/step_N/dcp/, with a metadata file that lets a later run load them
at another world size (DCP reshards on load), or in one process. Resuming and the tools read it
through `load_into`, and tools/consolidate.py turns it into one model.safetensors."""
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

DCP_FOLDER = "dcp"


def _model_keys(recipe, model):
    """The state-dict keys a checkpoint of this recipe holds (the whole model, or the adapters)."""
    return set(recipe.checkpoint_state(model))


def save(folder, recipe, model, optimizer):
    """Collective: every rank writes its shards of the model and the optimizer state."""
    model_state, optim_state = get_state_dict(model, optimizer)
    keys = _model_keys(recipe, model)
    model_state = {k: v for k, v in model_state.items() if k in keys}
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(folder / DCP_FOLDER))


def load_into(folder, recipe, model, optimizer):
    """Fill model and optimizer (sharded or not, at any world size) from a DCP checkpoint."""
    model_state, optim_state = get_state_dict(model, optimizer)
    keys = _model_keys(recipe, model)
    model_state = {k: v for k, v in model_state.items() if k in keys}
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(folder / DCP_FOLDER), no_dist=not torch.distributed.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=StateDictOptions(strict=False))


def is_dcp(folder):
    return (folder / DCP_FOLDER / ".metadata").is_file()


def uses_dcp(optimizer):
    """Whether a run's checkpoints go through DCP: its optimizer updates FSDP's sharded tensors."""
    return getattr(optimizer, "flat", True) is False
