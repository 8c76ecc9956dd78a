"""The layout of a run folder, shared by the trainer that writes it and the tools that read it:

    RUN/config.json                       the resolved config
    RUN/tokenizer.json                    the tokenizer a demo run built (others name theirs in the config)
    RUN/checkpoints/step_NNNNNN/          one checkpoint: model.safetensors (what the recipe's
                                          checkpoint_state holds), state.json (written last: a folder
                                          with one is complete), and the trainer's optimizer and RNG
                                          files (minilvlm/train/checkpoint.py); an FSDP run writes
                                          its model and optimizer shards into dcp/ instead
                                          (torch.distributed.checkpoint, minilvlm/train/dcp.py)

A soup (tools/soup.py) is a folder holding model.safetensors and state.json, like a checkpoint."""
import json
from pathlib import Path

import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file


def checkpoint_dir(run_dir, step):
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}"


def latest(run_dir):
    """The newest complete checkpoint folder of a run, or None."""
    folders = sorted(p.parent for p in (Path(run_dir) / "checkpoints").glob("step_*/state.json"))
    return folders[-1] if folders else None


def read_state(folder):
    """A checkpoint's state.json."""
    return json.loads((Path(folder) / "state.json").read_text())


def has_model(folder):
    """Whether a checkpoint folder holds model weights in either format."""
    folder = Path(folder)
    return (folder / "model.safetensors").is_file() or (folder / "dcp" / ".metadata").is_file()


def read_model_tensors(folder, template):
    """The model tensors of a checkpoint: model.safetensors, or, from an FSDP run's dcp/ shards, the
    full tensors gathered in this one process into `template` (a {name: tensor} of the right
    shapes, such as the recipe's checkpoint_state of a freshly built model)."""
    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        return load_file(folder / "model.safetensors")
    state = {"model": {k: v.clone() for k, v in template.items()}}
    dcp.load(state, checkpoint_id=str(folder / "dcp"), no_dist=True)
    return state["model"]
