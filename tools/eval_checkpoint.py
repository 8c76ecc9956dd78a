"""Evaluate a run's checkpoint on a split of a generated demo data set, without training.

    python tools/eval_checkpoint.py RUN_DIR DATA_DIR [--split test] [--checkpoint STEP_DIR]

RUN_DIR holds config.json and tokenizer.json of a training run (either recipe); the newest
checkpoint is used unless --checkpoint names one. DATA_DIR is a folder written by
`python -m minilvlm.data.demo` or by a run (RUN_DIR/data). Used to score the frozen demo base on
the MMA demo's new question types (docs/benchmarks.md)."""
import argparse
import json
import sys
from pathlib import Path

from safetensors.torch import load_file

from minilvlm.data import demo
from minilvlm.train import checkpoint, mma_setup, setup
from minilvlm.train.config import from_dict
from minilvlm.train.evaluate import evaluate
from minilvlm.train.loop import _print_eval


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python tools/eval_checkpoint.py", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("data_dir")
    parser.add_argument("--split", default="test")
    parser.add_argument("--checkpoint", help="a step_NNNNNN folder (default: the run's newest)")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    cfg = from_dict(json.loads((run_dir / "config.json").read_text()), str(run_dir / "config.json"))
    folder = Path(args.checkpoint) if args.checkpoint else checkpoint.latest(run_dir)
    if folder is None:
        print(f"error: no checkpoint under {run_dir / 'checkpoints'}", file=sys.stderr)
        return 2
    tokenizer = setup.load_tokenizer(cfg, run_dir, [])
    model = setup.build_model(cfg, tokenizer)
    tensors = load_file(folder / "model.safetensors")
    if hasattr(model, "load_trainable_state_dict"):
        model.load_trainable_state_dict(tensors, str(folder / "model.safetensors"))
    else:
        model.load_state_dict(tensors)
    records = demo.load_demo(args.data_dir, args.split)
    if cfg.model.recipe == "mma":
        records = mma_setup.prefix_text_only(records, cfg.model.mma.text_only_prefix)
    result = evaluate(model, records, tokenizer, template=cfg.data.template, image_size=cfg.model.vision.image_size,
                      batch=cfg.eval.batch, max_new_tokens=cfg.eval.max_new_tokens, image_mode=cfg.data.image_mode)
    _print_eval(result, f"{folder} on {args.data_dir} ({args.split})", cfg.eval.samples, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
