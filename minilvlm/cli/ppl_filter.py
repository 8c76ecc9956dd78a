"""Keep the records a reference model finds most likely: perplexity filtering of a data set.

    minilvlm-ppl-filter data.json --model RUN_DIR --keep 0.8 --out kept.json
    minilvlm-ppl-filter data.jsonl --model RUN_DIR --threshold 2.5 --out kept.jsonl
    torchrun --nproc_per_node 2 tools/ppl_filter.py data.json --model RUN_DIR --keep 0.8 --out kept.json

(`python tools/ppl_filter.py` is the same command.) Each record's score is the mean negative
log-likelihood of its assistant tokens under the model (a trained minilvlm run or checkpoint).
Writes OUT (the kept records, in the input's LLaVA or Alpaca format), OUT.hist.png (score histogram,
cut marked), OUT.stats.json and OUT.scores.jsonl; none of them may replace the input. Records that
cannot be read or encoded are counted, reported and left out; more than half of them skipped for one
reason is an error.
"""
import sys

from minilvlm.cli.common import parser_for, run
from minilvlm.config import ConfigError
from minilvlm.curation.ppl_filter import FilterJob, run_filter
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
    return parser


def _body(ns):
    if ns.keep is not None and not 0 < ns.keep <= 1:
        raise ConfigError("--keep must be a fraction in (0, 1]")
    if ns.batch < 1:
        raise ConfigError("--batch must be at least 1")
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


def main(argv=None):
    return run(_parser(), _body, argv)


if __name__ == "__main__":
    sys.exit(main())
