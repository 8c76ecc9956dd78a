"""Average checkpoints of one architecture into a model soup.

    minilvlm-soup RUN/checkpoints/step_000500 RUN/checkpoints/step_001000 --out soup/
    minilvlm-soup CKPT1 CKPT2 CKPT3 --out soup/ --greedy --run RUN --split val

(`python tools/soup.py` is the same command.) Uniform: the mean of every weight. Greedy: members
sorted by held-out accuracy (the run's --split, or --data FILE); each joins only if the soup's
accuracy does not drop. The soup folder holds model.safetensors, state.json and the tokenizer, so
minilvlm-eval and minilvlm-generate take it. --out must be a new or empty folder, never a member's.
"""
import sys

from minilvlm.cli.common import parser_for, run
from minilvlm.curation.soup import soup_of, write_soup


def _parser():
    parser = parser_for(__doc__)
    parser.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint or run folders")
    parser.add_argument("--out", required=True, help="folder for the soup (new or empty)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty folder (an earlier soup)")
    parser.add_argument("--greedy", action="store_true", help="greedy soup by held-out accuracy")
    parser.add_argument("--run", help="greedy: the run whose data scores the members (default: the first's)")
    parser.add_argument("--split", default="val", help="greedy: the held-out split (default val)")
    parser.add_argument("--data", help="greedy: a LLaVA file, demo folder or ScienceQA folder to score on instead")
    parser.add_argument("--device", default="auto", help="greedy: where members are scored (auto, cpu, cuda, cuda:N)")
    return parser


def _body(ns):
    tensors, info, members = soup_of(ns.checkpoints, ns.greedy, ns.run, ns.split, ns.data, ns.device,
                                     out=ns.out, force=ns.force)
    for trial in info.get("trials", []):
        print(f"  {'kept   ' if trial['kept'] else 'dropped'} {trial['added']}: soup accuracy "
              f"{100 * trial['soup_accuracy']:.2f}%")
    write_soup(ns.out, tensors, members, info)
    print(f"{info['method']} soup of {len(info['ingredients'])} of {len(members)} checkpoints -> {ns.out}")


def main(argv=None):
    return run(_parser(), _body, argv)


if __name__ == "__main__":
    sys.exit(main())
