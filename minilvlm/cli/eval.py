"""Evaluate a trained model: accuracy with LaVIN's Table 1 breakdown.

    minilvlm-eval RUN_DIR                              # the run's newest checkpoint, its test split
    minilvlm-eval RUN_DIR/checkpoints/step_000500 --split val
    minilvlm-eval RUN_DIR --data ScienceQA/ --split test          # a ScienceQA release folder
    minilvlm-eval RUN_DIR --data held_out.json --out results.json # a LLaVA or Alpaca file
    minilvlm-eval RUN_DIR/checkpoints/step_001000 --data other_run/data --split test   # a demo data folder

(`python tools/eval.py` is the same command.) Writes the figures (default: RUN_DIR/eval/<data>_<split>.json)
and beside them <name>.predictions.jsonl, one line per question. Records without an `answer` are
scored against their last assistant reply.
"""
import json
import sys
from pathlib import Path

from minilvlm.cli.common import parser_for, run
from minilvlm.config import ConfigError
from minilvlm.eval.benchmark import eval_records, load_split
from minilvlm.eval.load import load_model
from minilvlm.eval.scienceqa_metrics import format_table
from minilvlm.io import atomic_write_json, atomic_write_text


def _parser():
    parser = parser_for(__doc__)
    parser.add_argument("path", metavar="RUN_DIR_or_CHECKPOINT")
    parser.add_argument("--split", default="test", help="split to evaluate (default test)")
    parser.add_argument("--data", help="a LLaVA/Alpaca .json/.jsonl file, a ScienceQA folder or a demo data folder "
                                       "(default: the run's data)")
    parser.add_argument("--image-root", help="image folder for --data (default: beside the file / images/)")
    parser.add_argument("--out", help="results JSON (default: RUN_DIR/eval/<data>_<split>.json)")
    parser.add_argument("--batch", type=int, help="questions per generation batch (default: the run's eval.batch)")
    parser.add_argument("--max-new-tokens", type=int, help="default: the run's eval.max_new_tokens")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    return parser


def default_out(loaded, data, split):
    """Where results go without --out: the run folder's eval/, named after the data and split."""
    name = "run" if data is None else Path(data).stem or "data"
    return Path(loaded.run_dir) / "eval" / f"{name}_{split}.json"


def print_result(result, loaded, ns, out, predictions_path):
    print(f"{loaded.checkpoint} on {ns.data or 'the run data'} [{ns.split}]: {result['count']} questions")
    print(format_table(result))
    for key in sorted(k for k in result["accuracy"] if not k.startswith("task/")):
        print(f"  {key:<18} {100 * result['accuracy'][key]:6.2f}%  ({result['accuracy_count'][key]} questions)")
    bad = result["unparseable"]
    print(f"  unparseable multiple-choice replies (no 'The answer is X'): {bad['count']} of {bad['multiple_choice']}")
    if result.get("skipped"):
        print(f"  skipped records: {result['skipped']}")
    print(f"wrote {out} and {predictions_path}")


def _body(ns):
    for name in ("batch", "max_new_tokens"):
        if getattr(ns, name) is not None and getattr(ns, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    loaded = load_model(ns.path, threads=ns.threads, device=ns.device)
    records, skipped = load_split(loaded, ns.split, ns.data, ns.image_root)
    result = eval_records(loaded, records, ns.batch, ns.max_new_tokens)
    predictions = result.pop("predictions")
    result.update(checkpoint=str(loaded.checkpoint), split=ns.split, data=ns.data or "run", skipped=skipped)
    out = Path(ns.out) if ns.out else default_out(loaded, ns.data, ns.split)
    predictions_path = out.with_name(out.stem + ".predictions.jsonl")
    atomic_write_json(result, out)
    atomic_write_text("".join(json.dumps(p) + "\n" for p in predictions), predictions_path)
    print_result(result, loaded, ns, out, predictions_path)
    return 0


def main(argv=None):
    return run(_parser(), _body, argv)


if __name__ == "__main__":
    sys.exit(main())
