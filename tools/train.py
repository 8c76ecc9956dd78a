"""Train a vision-language model.

A thin wrapper: the command is minilvlm/cli/train.py, installed as `minilvlm-train` (pyproject.toml);
`python tools/train.py --help` shows its usage."""
import sys

from minilvlm.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
