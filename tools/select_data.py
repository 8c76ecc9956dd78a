"""Pick the instruction sets worth their cost by greedy forward selection of fine-tuning trials.

A thin wrapper: the command is minilvlm/cli/select_data.py, installed as `minilvlm-select-data`
(pyproject.toml); `python tools/select_data.py --help` shows its usage."""
import sys

from minilvlm.cli.select_data import main

if __name__ == "__main__":
    sys.exit(main())
