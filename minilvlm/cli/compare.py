"""Compare recipes or settings: train every arm of a comparison file over the same seeds and print held-out
accuracy as mean ± spread, overall and per question type.

    minilvlm-compare configs/compare/mma.toml [--seeds 3] [--jobs 2] [--out runs/compare/mma]

(`python tools/compare.py` is the same command.) Each arm is a config plus overrides
(minilvlm/curation/compare.py describes the file); each (arm, seed) run is a process of its own under
OUT/runs, --jobs at a time, and a rerun reuses every finished one. Writes OUT/FILE_STEM.json; prints the
table in Markdown (docs/recipes.md holds the measured ones).
"""
import sys

from minilvlm.cli.common import parser_for, run
from minilvlm.config import ConfigError
from minilvlm.curation.compare import format_table, read_comparison, run_comparison


def _parser():
    parser = parser_for(__doc__)
    parser.add_argument("comparison", metavar="COMPARISON.toml", help="the arms to compare")
    parser.add_argument("--seeds", type=int, default=0, help="seeds per arm (default: the file's, else 3)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, as separate processes")
    parser.add_argument("--out", default="", help="where the runs and compare.json go (default: the file's folder, "
                        "else runs/compare/NAME)")
    parser.add_argument("--base", default=None, metavar="RUN_DIR", help="the base run in place of the file's")
    parser.add_argument("--arms", nargs="+", default=None, metavar="NAME", help="only these arms")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run, after the arm's own (repeatable)")
    return parser


def _body(ns):
    if ns.seeds < 0:
        raise ConfigError("--seeds must be at least 1")
    if ns.jobs < 1:
        raise ConfigError("--jobs must be at least 1")
    comparison = read_comparison(ns.comparison)
    out = ns.out or comparison.folder
    result = run_comparison(comparison, out, seeds=ns.seeds or None, jobs=ns.jobs, extra=ns.overrides,
                            base=ns.base, arms=ns.arms)
    print(format_table(result))
    print(f"wrote {result['written']}")


def main(argv=None):
    return run(_parser(), _body, argv)


if __name__ == "__main__":
    sys.exit(main())
