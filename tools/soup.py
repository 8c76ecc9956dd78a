"""Average checkpoints of one architecture into a model soup.

    python tools/soup.py RUN/checkpoints/step_000500 RUN/checkpoints/step_001000 --out soup/
    python tools/soup.py CKPT1 CKPT2 CKPT3 --out soup/ --greedy --run RUN --split val

Uniform: the mean of every weight. Greedy: members sorted by held-out accuracy (the run's --split,
or --data FILE); each joins only if the soup's accuracy does not drop. The soup folder holds
model.safetensors, state.json and the tokenizer, so tools/eval.py and tools/generate.py take it.
"""
import argparse
import sys

from minilvlm.config import ConfigError
from minilvlm.curation.soup import SoupError, soup_of, write_soup
from minilvlm.data.errors import DataError
from minilvlm.eval.load import LoadError


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python tools/soup.py", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint or run folders")
    parser.add_argument("--out", required=True, help="folder for the soup")
    parser.add_argument("--greedy", action="store_true", help="greedy soup by held-out accuracy")
    parser.add_argument("--run", help="greedy: the run whose data scores the members (default: the first's)")
    parser.add_argument("--split", default="val", help="greedy: the held-out split (default val)")
    parser.add_argument("--data", help="greedy: a LLaVA file, demo folder or ScienceQA folder to score on instead")
    parser.add_argument("--device", default="auto", help="greedy: where members are scored (auto, cpu, cuda, cuda:N)")
    ns = parser.parse_args(argv)
    try:
        tensors, info, members = soup_of(ns.checkpoints, ns.greedy, ns.run, ns.split, ns.data, ns.device)
        for trial in info.get("trials", []):
            print(f"  {'kept   ' if trial['kept'] else 'dropped'} {trial['added']}: soup accuracy "
                  f"{100 * trial['soup_accuracy']:.2f}%")
        write_soup(ns.out, tensors, members, info)
    except (SoupError, LoadError, ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{info['method']} soup of {len(info['ingredients'])} of {len(members)} checkpoints -> {ns.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
