"""Ask a trained model a question, with an image or without, and watch the reply stream out.

A thin wrapper: the command is minilvlm/cli/generate.py, installed as `minilvlm-generate` (pyproject.toml);
`python tools/generate.py --help` shows its usage."""
import sys

from minilvlm.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())
