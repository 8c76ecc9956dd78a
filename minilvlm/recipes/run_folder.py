"""The layout of a run folder, shared by the trainer that writes it and the tools that read it:

    RUN/config.json                       the resolved config
    RUN/tokenizer.json                    the tokenizer a demo run built (others name theirs in the config)
    RUN/checkpoints/step_NNNNNN/          one checkpoint: model.safetensors (what the recipe's
                                          checkpoint_state holds), state.json (written last: a folder
                                          with one is complete), and the trainer's optimizer and RNG
                                          files (minilvlm/train/checkpoint.py)

A soup (tools/soup.py) is a folder holding model.safetensors and state.json, like a checkpoint."""
import json
from pathlib import Path


def checkpoint_dir(run_dir, step):
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}"


def latest(run_dir):
    """The newest complete checkpoint folder of a run, or None."""
    folders = sorted(p.parent for p in (Path(run_dir) / "checkpoints").glob("step_*/state.json"))
    return folders[-1] if folders else None


def read_state(folder):
    """A checkpoint's state.json."""
    return json.loads((Path(folder) / "state.json").read_text())
