"""Ask a trained model a question, with an image or without, and watch the reply stream out.

    python tools/generate.py RUN_DIR --image picture.png --prompt "What colour is the shape?"
    python tools/generate.py RUN_DIR --prompt "What is 3 + 4?"                 # text only
    python tools/generate.py RUN_DIR --image p.png --prompt "..." --temperature 0   # greedy

Sampling defaults are LaVIN's: temperature 0.1, top-p 0.75. RUN_DIR may also be a checkpoint folder.
"""
import argparse
import sys

from minilvlm.data.errors import DataError
from minilvlm.eval.chat import LAVIN_TEMPERATURE, LAVIN_TOP_P, ask
from minilvlm.eval.load import LoadError, load_model
from minilvlm.config import ConfigError


def main(argv=None, stdout=None):
    stdout = stdout or sys.stdout
    parser = argparse.ArgumentParser(prog="python tools/generate.py", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("path", metavar="RUN_DIR", help="a run folder or a checkpoint folder")
    parser.add_argument("--image", help="an image file (omit for a text-only prompt)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--temperature", type=float, default=LAVIN_TEMPERATURE, help="0: greedy (default 0.1)")
    parser.add_argument("--top-p", type=float, default=LAVIN_TOP_P, help="nucleus mass (default 0.75)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, help="sampling seed, for repeatable samples")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    ns = parser.parse_args(argv)
    if ns.temperature < 0 or not 0 < ns.top_p <= 1:
        parser.error("--temperature must be >= 0 and --top-p in (0, 1]")

    def show(piece):
        stdout.write(piece)
        stdout.flush()
    try:
        loaded = load_model(ns.path, device=ns.device)
        ask(loaded, ns.prompt, ns.image, temperature=ns.temperature, top_p=ns.top_p,
            max_new_tokens=ns.max_new_tokens, on_text=show, seed=ns.seed)
    except (LoadError, ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
