"""Turn an FSDP run's sharded checkpoint (checkpoints/step_N/dcp/, written by
torch.distributed.checkpoint) into one model.safetensors beside it, as a one-process run writes.

    python tools/consolidate.py RUN_DIR/checkpoints/step_000500      # or RUN_DIR: its newest
"""
import argparse
import sys

from minilvlm.config import ConfigError
from minilvlm.eval.load import LoadError, load_model
from minilvlm.io import atomic_save_safetensors


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python tools/consolidate.py", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("path", metavar="CHECKPOINT", help="a checkpoint folder, or a run folder (its newest)")
    ns = parser.parse_args(argv)
    try:
        loaded = load_model(ns.path, device="cpu")
    except (LoadError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = loaded.checkpoint / "model.safetensors"
    if out.exists():
        print(f"error: {out} exists already; this checkpoint needs no consolidation", file=sys.stderr)
        return 2
    tensors = loaded.recipe.checkpoint_state(loaded.model)
    atomic_save_safetensors(tensors, out)
    print(f"{len(tensors)} tensors ({sum(t.numel() for t in tensors.values()):,} values) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
