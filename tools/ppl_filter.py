"""Keep the records a reference model finds most likely: perplexity filtering of a data set.

A thin wrapper: the command is minilvlm/cli/ppl_filter.py, installed as `minilvlm-ppl-filter` (pyproject.toml);
`python tools/ppl_filter.py --help` shows its usage."""
import sys

from minilvlm.cli.ppl_filter import main

if __name__ == "__main__":
    sys.exit(main())
