"""Average checkpoints of one architecture into a model soup.

A thin wrapper: the command is minilvlm/cli/soup.py, installed as `minilvlm-soup` (pyproject.toml);
`python tools/soup.py --help` shows its usage."""
import sys

from minilvlm.cli.soup import main

if __name__ == "__main__":
    sys.exit(main())
