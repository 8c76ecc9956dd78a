"""Ask a trained model a question, with images or without, and watch the reply stream out.

    minilvlm-generate RUN_DIR --image picture.png --prompt "What colour is the shape?"
    minilvlm-generate RUN_DIR --prompt "What is 3 + 4?"                       # text only
    minilvlm-generate RUN_DIR --image a.png --image b.png --prompt "<image> or <image>: which is red?"
    minilvlm-generate RUN_DIR --image p.png --prompt "..." --temperature 0    # greedy

(`python tools/generate.py` is the same command.) Sampling defaults are LaVIN's: temperature 0.1,
top-p 0.75. Each --image goes where the prompt's <image> tags are, in order (or all before the text
when the prompt has none). RUN_DIR may also be a checkpoint folder.
"""
import sys

from minilvlm.cli.common import parser_for, run
from minilvlm.config import ConfigError
from minilvlm.eval.chat import LAVIN_TEMPERATURE, LAVIN_TOP_P, ask
from minilvlm.eval.load import load_model


def _parser():
    parser = parser_for(__doc__)
    parser.add_argument("path", metavar="RUN_DIR", help="a run folder or a checkpoint folder")
    parser.add_argument("--image", action="append", default=[], help="an image file; repeat for several")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--temperature", type=float, default=LAVIN_TEMPERATURE, help="0: greedy (default 0.1)")
    parser.add_argument("--top-p", type=float, default=LAVIN_TOP_P, help="nucleus mass (default 0.75)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, help="sampling seed, for repeatable samples")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    return parser


def main(argv=None, stdout=None):
    stdout = stdout or sys.stdout

    def show(piece):
        stdout.write(piece)
        stdout.flush()

    def body(ns):
        if not ns.temperature >= 0 or not 0 < ns.top_p <= 1 or ns.max_new_tokens < 1:
            raise ConfigError("--temperature must be >= 0, --top-p in (0, 1] and --max-new-tokens at least 1")
        loaded = load_model(ns.path, device=ns.device)
        ask(loaded, ns.prompt, ns.image, temperature=ns.temperature, top_p=ns.top_p,
            max_new_tokens=ns.max_new_tokens, on_text=show, seed=ns.seed)
        stdout.write("\n")
    return run(_parser(), body, argv)


if __name__ == "__main__":
    sys.exit(main())
