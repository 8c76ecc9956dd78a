"""Export a trained llava-recipe run to a Hugging Face folder that transformers loads.

A thin wrapper: the command is minilvlm/cli/export_hf.py, installed as `minilvlm-export` (pyproject.toml);
`python tools/export_hf.py --help` shows its usage."""
import sys

from minilvlm.cli.export_hf import main

if __name__ == "__main__":
    sys.exit(main())
