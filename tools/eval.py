"""Evaluate a trained model: ScienceQA-style accuracy with LaVIN's Table 1 breakdown.

A thin wrapper: the command is minilvlm/cli/eval.py, installed as `minilvlm-eval` (pyproject.toml);
`python tools/eval.py --help` shows its usage."""
import sys

from minilvlm.cli.eval import main

if __name__ == "__main__":
    sys.exit(main())
