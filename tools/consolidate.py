"""Write an FSDP run's sharded checkpoint as one model.safetensors.

A thin wrapper: the command is minilvlm/cli/consolidate.py, installed as `minilvlm-consolidate`
(pyproject.toml); `python tools/consolidate.py --help` shows its usage."""
import sys

from minilvlm.cli.consolidate import main

if __name__ == "__main__":
    sys.exit(main())
