"""Evaluate a trained model: ScienceQA-style accuracy with LaVIN's Table 1 breakdown.

    python tools/eval.py RUN_DIR                       # the run's newest checkpoint, demo test split
    python tools/eval.py RUN_DIR/checkpoints/step_000500 --split val
    python tools/eval.py RUN_DIR --data ScienceQA/ --split test    # a ScienceQA release folder
    python tools/eval.py RUN_DIR --data held_out.json --out results.json
    python tools/eval.py RUN_DIR/checkpoints/step_001000 --data other_run/data --split test   # a demo data folder

Writes results.json (figures) and results.predictions.jsonl (one line per question).
"""
import argparse
import json
import sys
from pathlib import Path

from minilvlm.data.errors import DataError
from minilvlm.eval.benchmark import eval_records, load_split
from minilvlm.eval.load import LoadError, load_model
from minilvlm.eval.scienceqa_metrics import format_table
from minilvlm.io import atomic_write_json, atomic_write_text
from minilvlm.config import ConfigError


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python tools/eval.py", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("path", metavar="RUN_DIR_or_CHECKPOINT")
    parser.add_argument("--split", default="test", help="split to evaluate (default test)")
    parser.add_argument("--data", help="a LLaVA .json/.jsonl file, a ScienceQA folder or a demo data folder (default: the run's data)")
    parser.add_argument("--image-root", help="image folder for --data (default: beside the file / images/)")
    parser.add_argument("--out", default="results.json", help="results JSON (default results.json)")
    parser.add_argument("--batch", type=int, help="questions per generation batch (default: the run's eval.batch)")
    parser.add_argument("--max-new-tokens", type=int, help="default: the run's eval.max_new_tokens")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    ns = parser.parse_args(argv)
    try:
        loaded = load_model(ns.path, threads=ns.threads, device=ns.device)
        records = load_split(loaded, ns.split, ns.data, ns.image_root)
        result = eval_records(loaded, records, ns.batch, ns.max_new_tokens)
    except (LoadError, ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    predictions = result.pop("predictions")
    result.update(checkpoint=str(loaded.checkpoint), split=ns.split, data=ns.data or "run")
    out = Path(ns.out)
    predictions_path = out.with_name(out.stem + ".predictions.jsonl")
    atomic_write_json(result, out)
    atomic_write_text("".join(json.dumps(p) + "\n" for p in predictions), predictions_path)
    print(f"{loaded.checkpoint} on {ns.data or 'the run data'} [{ns.split}]: {result['count']} questions")
    print(format_table(result))
    for key in sorted(k for k in result["accuracy"] if not k.startswith("task/")):
        print(f"  {key:<18} {100 * result['accuracy'][key]:6.2f}%  ({result['accuracy_count'][key]} questions)")
    bad = result["unparseable"]
    print(f"  unparseable multiple-choice replies (no 'The answer is X'): {bad['count']} of {bad['multiple_choice']}")
    print(f"wrote {out} and {predictions_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
