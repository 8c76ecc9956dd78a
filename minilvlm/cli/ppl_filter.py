"""Keep the records a reference model finds most likely: perplexity filtering of a data set.

    minilvlm-ppl-filter data.json --model RUN_DIR --keep 0.8 --out kept.json
    minilvlm-ppl-filter data.jsonl --model RUN_DIR --threshold 2.5 --out kept.jsonl
    torchrun --nproc_per_node 2 tools/ppl_filter.py data.json --model RUN_DIR --keep 0.8 --out kept.json
    minilvlm-ppl-filter data.json --model RUN_DIR --keep 0.7 --out kept.json --compare CONFIG.toml --seeds 3

(`python tools/ppl_filter.py` is the same command.) Each record's score is the mean negative
log-likelihood of its assistant tokens under the model (a trained minilvlm run or checkpoint).
Writes OUT (the kept records, in the input's LLaVA or Alpaca format), OUT.hist.png (score histogram,
cut marked), OUT.stats.json and OUT.scores.jsonl; none of them may replace the input. Records that
cannot be read or encoded are counted, reported and left out; more than half of them skipped for one
reason is an error.

--compare CONFIG then shows whether the filtering pays: it trains CONFIG for the same steps
(--compare-steps, default the config's) on the full input and on the kept records, over --seeds seeds
(--jobs runs at once, as separate processes), and prints both held-out accuracies (the config's
held-out split: its data.eval_file). The runs go to --compare-dir (default OUT's name + ".compare/"),
with compare.json; a rerun reuses the runs that finished.
"""
import sys
from pathlib import Path

from minilvlm import recipes
from minilvlm.cli.common import parser_for, run
from minilvlm.config import ConfigError
from minilvlm.curation.ppl_filter import CompareJob, FilterJob, compare_runs, run_filter
from minilvlm.device import local_rank, resolve_device
from minilvlm.train.distributed import init_distributed, shutdown_distributed


def _parser():
    parser = parser_for(__doc__)
    parser.add_argument("data", metavar="DATA_FILE", help="a LLaVA or Alpaca .json/.jsonl file")
    parser.add_argument("--model", required=True, metavar="RUN_DIR", help="the reference model (run or checkpoint)")
    cut = parser.add_mutually_exclusive_group(required=True)
    cut.add_argument("--keep", type=float, help="fraction of the records to keep (lowest scores)")
    cut.add_argument("--threshold", type=float, help="keep records scoring at most this mean NLL")
    parser.add_argument("--out", required=True, help="kept records (.json or .jsonl)")
    parser.add_argument("--format", choices=("auto", "llava", "alpaca"), default="auto")
    parser.add_argument("--image-root", help="image folder (default: the data file's folder)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (under torchrun: one GPU per rank)")
    compare = parser.add_argument_group("comparing runs on the full and the kept set")
    compare.add_argument("--compare", metavar="CONFIG", help="a TOML config to train on both sets")
    compare.add_argument("--compare-steps", type=int, default=0, help="steps per run (default: the config's)")
    compare.add_argument("--compare-dir", help="folder for the runs (default: OUT's name + '.compare')")
    compare.add_argument("--seeds", type=int, default=1, help="seeds per set (default 1)")
    compare.add_argument("--jobs", type=int, default=1, help="runs at once, as separate processes (default 1)")
    compare.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="a config override for the compared runs (repeatable)")
    return parser


def _body(ns):
    if ns.keep is not None and not 0 < ns.keep <= 1:
        raise ConfigError("--keep must be a fraction in (0, 1]")
    if ns.batch < 1:
        raise ConfigError("--batch must be at least 1")
    if ns.compare is None and (ns.compare_steps or ns.compare_dir or ns.seeds != 1 or ns.jobs != 1 or ns.overrides):
        raise ConfigError("--compare-steps, --compare-dir, --seeds, --jobs and --set go with --compare CONFIG")
    if ns.compare_steps < 0 or ns.seeds < 1 or ns.jobs < 1:
        raise ConfigError("--compare-steps must be at least 0 (0: the config's), --seeds and --jobs at least 1")
    if ns.compare:   # a mistake in the compared config shows before any scoring
        recipes.load_config(ns.compare, list(ns.overrides), check_paths=False)
    job = FilterJob(ns.data, ns.model, ns.out, keep=ns.keep, threshold=ns.threshold, fmt=ns.format,
                    image_root=ns.image_root, batch=ns.batch, device=ns.device)
    rank, world = init_distributed(resolve_device(ns.device, local_rank()))
    try:
        summary = run_filter(job, rank, world)
    finally:
        shutdown_distributed()
    if summary is not None:
        print(f"scored {summary['scored']} of {summary['records']} records with {summary['model']}: mean NLL "
              f"{summary['mean']:.3f}, cut {summary['cut']:.3f}; kept {summary['written']} -> {ns.out}")
        if summary["skipped"]:
            print(f"skipped: {summary['skipped']}")
    if ns.compare and summary is not None:
        if world > 1:
            raise ConfigError("--compare trains its runs one process each; run it without torchrun")
        folder = ns.compare_dir or str(Path(ns.out).with_suffix("")) + ".compare"
        result = compare_runs(job, CompareJob(ns.compare, folder, ns.compare_steps, ns.seeds, ns.jobs,
                                              tuple(ns.overrides)))
        print(format_compare(result))
        print(f"wrote {folder}/compare.json")


def format_compare(result):
    lines = [f"held-out accuracy after {result['steps']} steps of {result['config']} ({result['seeds']} seed(s), "
             "mean ± half-range):"]
    for arm, row in result["arms"].items():
        acc = "failed" if row["mean"] is None else f"{100 * row['mean']:.1f} ± {100 * row['spread']:.1f}%"
        seeds = ", ".join("failed" if v is None else f"{100 * v:.1f}" for v in row["values"])
        lines.append(f"  {arm:<5} {row['data']}: {acc}  (seeds: {seeds})")
    full, kept = result["arms"]["full"]["mean"], result["arms"]["kept"]["mean"]
    if full is not None and kept is not None:
        lines.append(f"  kept - full: {100 * (kept - full):+.1f} points")
    return "\n".join(lines)


def main(argv=None):
    return run(_parser(), _body, argv)


if __name__ == "__main__":
    sys.exit(main())
