"""Compare recipes or settings over seeds (configs/compare/*.toml).

A thin wrapper: the command is minilvlm/cli/compare.py, installed as `minilvlm-compare`
(pyproject.toml); `python tools/compare.py --help` shows its usage."""
import sys

from minilvlm.cli.compare import main

if __name__ == "__main__":
    sys.exit(main())
