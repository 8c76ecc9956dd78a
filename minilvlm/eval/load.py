"""Loading a trained model for inference: from a run folder (its newest complete checkpoint) or
from one checkpoint folder (checkpoints/step_NNNNNN/, or a soup written by tools/soup.py), with
the config saved in the checkpoint's state.json and the run's tokenizer."""
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from minilvlm.data.tokenizer import Tokenizer
from minilvlm.train import checkpoint, setup
from minilvlm.train.config import RunConfig, from_dict


class LoadError(ValueError):
    """A run or checkpoint folder that cannot be loaded, with what to do about it."""


@dataclass
class LoadedModel:
    cfg: RunConfig
    model: torch.nn.Module
    tokenizer: Tokenizer
    checkpoint: Path      # the folder holding model.safetensors and state.json
    run_dir: Path         # where the run's data and tokenizer live
    state: dict           # the checkpoint's state.json


def resolve_checkpoint(path):
    """(checkpoint folder, run folder) for a run folder or a checkpoint folder."""
    path = Path(path)
    if not path.is_dir():
        raise LoadError(f"{path}: no such folder; pass a run folder (with checkpoints/) or a checkpoint folder")
    if (path / "state.json").is_file() and (path / "model.safetensors").is_file():
        # checkpoints/step_N/ belongs to the run two levels up; a soup folder is its own run folder
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path
        return path, run_dir
    found = checkpoint.latest(path)
    if found is None:
        raise LoadError(f"{path}: neither a checkpoint folder (model.safetensors + state.json) nor a run "
                        f"folder with a complete checkpoint under {path / 'checkpoints'}")
    if not (found / "model.safetensors").is_file():
        raise LoadError(f"{found}: state.json without model.safetensors (a partial copy?)")
    return found, path


def find_tokenizer(cfg, folder, run_dir):
    """The configured tokenizer, else tokenizer.json beside the weights, else the run's."""
    if cfg.data.tokenizer:
        return Tokenizer(cfg.data.tokenizer)
    for place in (folder, run_dir):
        if (place / "tokenizer.json").is_file():
            return Tokenizer(place)
    raise LoadError(f"no tokenizer.json in {folder} or {run_dir}, and the config names none (data.tokenizer); "
                    "copy the run's tokenizer.json beside the checkpoint")


def load_weights(model, tensors, source):
    """Load a checkpoint's tensors into a model built from its config. An adapter recipe's
    checkpoint (mma) holds only the trained tensors; its frozen base comes from the config."""
    try:
        if hasattr(model, "load_trainable_state_dict"):
            model.load_trainable_state_dict(tensors, str(source))
            return
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except (RuntimeError, ValueError) as err:   # shapes that do not fit the config
        raise LoadError(f"{source} does not fit the config in state.json: {err}") from None
    if missing or unexpected:
        raise LoadError(f"{source} does not fit the config in state.json: "
                        f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")


def load_model(path, threads=0):
    """A LoadedModel in eval mode, weights in fp32 as trained."""
    folder, run_dir = resolve_checkpoint(path)
    state = checkpoint.read_state(folder)
    if "config" not in state:
        raise LoadError(f"{folder / 'state.json'} has no 'config' entry; it was not written by the trainer or soup")
    cfg = from_dict(state["config"], str(folder / "state.json"))
    if threads:
        torch.set_num_threads(threads)
    tokenizer = find_tokenizer(cfg, folder, run_dir)
    model = setup.build_model(cfg, tokenizer)
    load_weights(model, load_file(folder / "model.safetensors"), folder / "model.safetensors")
    model.eval()
    return LoadedModel(cfg, model, tokenizer, folder, run_dir, state)
