"""Pick the instruction sets worth their cost: greedy forward selection by fine-tuning trials.

    minilvlm-select-data --base RUN_DIR --sets a.json b.json NAME=c.json --heldout val.json \
        --test test.json --steps 200 --out runs/selection [--jobs 2] [--seeds 3] [--soup]

(`python tools/select_data.py` is the same command.) --base is a finished run (each trial fine-tunes its
last checkpoint, with its config and tokenizer) or a TOML config (trials train it as written). Each
round fine-tunes the base once per remaining set added to the chosen mixture (equal weights, --steps
steps), scores it on --heldout, and keeps the best if it gains at least --min-gain points; then every
set's leave-one-out loss against the all-sets model, and on --test over --seeds seeds the chosen
mixture against all sets, the best single set and (--soup) the greedy soup of one model per chosen set.
Trials are processes of their own under OUT/trials, --jobs at a time; a crashed trial is reported and
its set dropped; a rerun reuses finished trials. A set whose records (the same pictures and replies)
the chosen sets already hold, more than --max-overlap percent of them, leaves untried as a
near-duplicate; before the first round, a set whose questions (word pairs) or short answers occur in
--heldout less than --min-relevance percent of the time leaves untried as off-target. Writes
OUT/selection.json (every table), OUT/selection.png (accuracy against tokens) and OUT/mixture.toml
(the chosen data.mixture).
"""
import sys

from minilvlm.cli.common import parser_for, run
from minilvlm.config import ConfigError
from minilvlm.curation.selection import SelectJob, select
from minilvlm.curation.selection_report import format_table


def _parser():
    parser = parser_for(__doc__)
    parser.add_argument("--base", required=True, metavar="RUN_DIR|CONFIG", help="the run or config trials start from")
    parser.add_argument("--sets", required=True, nargs="+", metavar="[NAME=]FILE", help="the candidate sets")
    parser.add_argument("--heldout", required=True, metavar="FILE", help="the file every trial is scored on")
    parser.add_argument("--test", default="", metavar="FILE", help="the final comparison's file (default: --heldout)")
    parser.add_argument("--steps", required=True, type=int, help="optimizer steps per trial")
    parser.add_argument("--out", required=True, help="the pipeline's folder (trials are kept and reused there)")
    parser.add_argument("--min-gain", type=float, default=1.0, help="points of accuracy a set must add (default 1)")
    parser.add_argument("--jobs", type=int, default=1, help="trials run at once, as separate processes")
    parser.add_argument("--seeds", type=int, default=1, help="seeds of the final comparison (default 1)")
    parser.add_argument("--soup", action="store_true", help="also soup one model per chosen set")
    parser.add_argument("--max-overlap", type=float, default=50.0,
                        help="percent of a set's records (same pictures and replies) the chosen sets may already "
                             "hold before it leaves untried as a near-duplicate (default 50; 100 turns this off)")
    parser.add_argument("--min-relevance", type=float, default=10.0,
                        help="percent of a set's question word pairs, and of its short answers, that must occur in "
                             "--heldout, or it leaves untried as off-target (default 10; 0 turns this off)")
    parser.add_argument("--max-rounds", type=int, default=0, help="stop after this many rounds (0: no limit)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every trial, e.g. --set optim.lr=5e-4 (repeatable)")
    return parser


def _body(ns):
    if ns.min_gain < 0:
        raise ConfigError("--min-gain must be at least 0 points")
    if not 0 <= ns.max_overlap <= 100:
        raise ConfigError("--max-overlap must be a percentage from 0 to 100")
    if not 0 <= ns.min_relevance <= 100:
        raise ConfigError("--min-relevance must be a percentage from 0 to 100")
    if ns.max_rounds < 0:
        raise ConfigError("--max-rounds must be at least 0")
    job = SelectJob(ns.base, ns.sets, ns.heldout, ns.out, ns.steps, test=ns.test, min_gain=ns.min_gain / 100,
                    jobs=ns.jobs, seeds=ns.seeds, soup=ns.soup, overrides=tuple(ns.overrides),
                    max_rounds=ns.max_rounds, max_overlap=ns.max_overlap / 100,
                    min_relevance=ns.min_relevance / 100)
    result = select(job)
    print(format_table(result))
    print(f"wrote {ns.out}/selection.json, selection.png and mixture.toml")


def main(argv=None):
    return run(_parser(), _body, argv)


if __name__ == "__main__":
    sys.exit(main())
