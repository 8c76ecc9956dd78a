"""Loading a trained model for inference: from a run folder (its newest complete checkpoint) or
from one checkpoint folder (checkpoints/step_NNNNNN/, or a soup written by tools/soup.py), with
the config saved in the checkpoint's state.json and the run's tokenizer. The recipe builds the
model and loads what its checkpoints hold."""
from dataclasses import dataclass
from pathlib import Path

import torch

from minilvlm import recipes
from minilvlm.config import RunConfig
from minilvlm.data.images import ImageConfig
from minilvlm.data.tokenizer import Tokenizer
from minilvlm.device import DeviceError, local_rank, resolve_device
from minilvlm.recipes.base import Recipe
from minilvlm.recipes.run_folder import has_model, latest, read_model_file, read_state


class LoadError(ValueError):
    """A run or checkpoint folder that cannot be loaded, with what to do about it."""


@dataclass
class LoadedModel:
    cfg: RunConfig
    recipe: Recipe
    model: torch.nn.Module
    tokenizer: Tokenizer
    checkpoint: Path      # the folder holding model.safetensors and state.json
    run_dir: Path         # where the run's data and tokenizer live
    state: dict           # the checkpoint's state.json

    @property
    def device(self):
        return self.model.lm.embed.weight.device

    @property
    def images(self) -> ImageConfig:
        """How this run decodes images."""
        return self.recipe.image_config(self.cfg)


def resolve_checkpoint(path):
    """(checkpoint folder, run folder) for a run folder or a checkpoint folder."""
    path = Path(path)
    if not path.is_dir():
        raise LoadError(f"{path}: no such folder; pass a run folder (with checkpoints/) or a checkpoint folder")
    if (path / "state.json").is_file() and has_model(path):
        # checkpoints/step_N/ belongs to the run two levels up; a soup folder is its own run folder
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path
        return path, run_dir
    found = latest(path)
    if found is None:
        raise LoadError(f"{path}: neither a checkpoint folder (model.safetensors + state.json) nor a run "
                        f"folder with a complete checkpoint under {path / 'checkpoints'}")
    if not has_model(found):
        raise LoadError(f"{found}: state.json without model.safetensors or dcp/ (a partial copy?)")
    return found, path


def find_tokenizer(cfg, folder, run_dir):
    """The tokenizer beside the weights (a soup's), else the run folder's copy
    (minilvlm/recipes/run_data.py), else, for runs from before the copy, the configured one."""
    for place in (folder, run_dir):
        if (place / "tokenizer.json").is_file():
            return Tokenizer(place)
    configured = cfg.data.tokenizer
    if configured and Path(configured).exists():
        return Tokenizer(configured)
    where = (f"and the tokenizer its config names (data.tokenizer = {configured!r}, relative to the folder the run "
             f"was started in) is not at {Path(configured).resolve()}" if configured else "and its config names none")
    raise LoadError(f"no tokenizer.json in {folder} or in the run folder {run_dir}, {where}; copy the tokenizer's "
                    f"files (tokenizer.json, tokenizer_config.json) into {run_dir}")


def load_weights(loaded, tensors, source):
    """Load checkpoint tensors (what the recipe's checkpoints hold) into the loaded model."""
    try:
        loaded.recipe.load_checkpoint_state(loaded.model, tensors, source)
    except (RuntimeError, ValueError) as err:   # shapes that do not fit the config
        raise LoadError(f"{source} does not fit the config in state.json: {err}") from None


def load_model(path, threads=0, device="auto"):
    """A LoadedModel in eval mode on `device` (a setting as train.device takes: auto, cpu, cuda,
    cuda:N), weights in fp32 as trained."""
    try:
        device = resolve_device(device, local_rank())
    except DeviceError as err:
        raise LoadError(f"--device: {err}") from None
    if device.type == "meta":
        raise LoadError("--device meta: a loaded model needs real memory; use cpu or cuda")
    folder, run_dir = resolve_checkpoint(path)
    state = read_state(folder)
    if "config" not in state:
        raise LoadError(f"{folder / 'state.json'} has no 'config' entry; it was not written by the trainer or soup")
    cfg = recipes.config_from_dict(state["config"], str(folder / "state.json"))
    if threads:
        torch.set_num_threads(threads)
    recipe = recipes.of(cfg)
    tokenizer = find_tokenizer(cfg, folder, run_dir)
    # A checkpoint that holds the whole model replaces every weight: the pretrained ones are not read.
    model = recipe.build_model(cfg, tokenizer, load_weights=recipe.checkpoint_needs_base(cfg))
    loaded = LoadedModel(cfg, recipe, model, tokenizer, folder, run_dir, state)
    load_weights(loaded, read_model_file(folder, recipe, model), folder / "model.safetensors")
    model.to(device).eval()
    return loaded
