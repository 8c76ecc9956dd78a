"""Keep the records a reference model finds most likely: perplexity filtering of a data set.

    python tools/ppl_filter.py data.json --model RUN_DIR --keep 0.8 --out kept.json
    python tools/ppl_filter.py data.jsonl --model RUN_DIR --threshold 2.5 --out kept.jsonl
    torchrun --nproc_per_node 2 tools/ppl_filter.py data.json --model RUN_DIR --keep 0.8 --out kept.json

Each record's score is the mean negative log-likelihood of its assistant tokens under the model
(a trained minilvlm run or checkpoint). Writes OUT (the kept records, in the input's LLaVA or
Alpaca format), OUT.hist.png (score histogram, cut marked), OUT.stats.json and OUT.scores.jsonl.
Records that cannot be read or encoded are counted, reported and left out.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

from minilvlm.curation.filter_output import plot_histogram, read_with_objects, write_subset
from minilvlm.curation.perplexity import score_records, select, stats
from minilvlm.data.errors import DataError, SkipCounter
from minilvlm.data.jsonfile import iter_json
from minilvlm.eval.load import LoadError, load_model
from minilvlm.io import atomic_write_json, atomic_write_text
from minilvlm.train.config import ConfigError
from minilvlm.train.distributed import init_distributed, shutdown_distributed


def detect_format(path):
    for _, _, obj in iter_json(path):
        if isinstance(obj, dict) and "instruction" in obj and "conversations" not in obj:
            return "alpaca"
        return "llava"
    raise DataError("the file holds no records", reason="empty_file", file=path)


def _gather(values, world):
    if world == 1:
        return [values]
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, values)
    return gathered


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python tools/ppl_filter.py", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("data", metavar="DATA_FILE", help="a LLaVA or Alpaca .json/.jsonl file")
    parser.add_argument("--model", required=True, metavar="RUN_DIR", help="the reference model (run or checkpoint)")
    cut = parser.add_mutually_exclusive_group(required=True)
    cut.add_argument("--keep", type=float, help="fraction of the records to keep (lowest scores)")
    cut.add_argument("--threshold", type=float, help="keep records scoring at most this mean NLL")
    parser.add_argument("--out", required=True, help="kept records (.json or .jsonl)")
    parser.add_argument("--format", choices=("auto", "llava", "alpaca"), default="auto")
    parser.add_argument("--image-root", help="image folder (default: the data file's folder)")
    parser.add_argument("--batch", type=int, default=16)
    ns = parser.parse_args(argv)
    if ns.keep is not None and not 0 < ns.keep <= 1:
        parser.error("--keep must be a fraction in (0, 1]")
    rank, world = init_distributed()
    try:
        return _run(ns, rank, world)
    except (LoadError, ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        shutdown_distributed()


def _run(ns, rank, world):
    fmt = detect_format(ns.data) if ns.format == "auto" else ns.format
    read_skips, score_skips = SkipCounter(), SkipCounter()
    pairs = read_with_objects(ns.data, fmt, ns.image_root, read_skips)   # every rank reads all
    loaded = load_model(ns.model)
    mine = [pairs[i][0] for i in range(rank, len(pairs), world)]   # records shard round-robin
    scores = [None] * len(pairs)
    skip_counts = dict(read_skips.counts)
    gathered = _gather((score_records(loaded, mine, ns.batch, score_skips), dict(score_skips.counts)), world)
    for r, (part, counts) in enumerate(gathered):
        scores[r::world] = part
        for reason, n in counts.items():
            skip_counts[reason] = skip_counts.get(reason, 0) + n
    if rank != 0:
        return 0
    flags, cut_value = select(scores, keep=ns.keep, threshold=ns.threshold)
    out = Path(ns.out)
    n_kept = write_subset([obj for _, obj in pairs], flags, out)
    summary = stats(scores, flags, cut_value)
    summary.update(data=ns.data, format=fmt, model=str(loaded.checkpoint), keep=ns.keep, threshold=ns.threshold,
                   skipped=skip_counts, ranks=world)
    base = out.with_suffix("")
    atomic_write_json(summary, base.with_name(base.name + ".stats.json"))
    atomic_write_text("".join(json.dumps({"id": r.id, "score": s, "kept": f}) + "\n"
                              for (r, _), s, f in zip(pairs, scores, flags)), base.with_name(base.name + ".scores.jsonl"))
    plot_histogram(scores, cut_value, base.with_name(base.name + ".hist.png"))
    print(f"scored {summary['scored']} of {len(pairs)} records with {loaded.checkpoint}: mean NLL "
          f"{summary['mean']:.3f}, cut {summary['cut']:.3f}; kept {n_kept} -> {out}")
    if skip_counts:
        print(f"skipped: {skip_counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
