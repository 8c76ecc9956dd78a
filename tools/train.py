"""Train a vision-language model.

    python tools/train.py                                  # the embedded demo (CPU, a few minutes)
    python tools/train.py configs/x.toml optim.lr=1e-4     # a TOML config plus dotted overrides
    python tools/train.py --resume RUN_DIR [overrides]     # continue a run from its last checkpoint
    python tools/train.py configs/x.toml --dry-run --nproc 8   # one step on the meta device, memory per rank
    torchrun --nproc_per_node 2 tools/train.py [...]       # data-parallel, ZeRO-1 sharded optimizer

train.device picks where the run computes (auto: a GPU when torch sees one); under torchrun each
rank takes its own GPU (cuda:LOCAL_RANK).
"""
import argparse
import json
import sys
from pathlib import Path

from minilvlm import recipes
from minilvlm.config import ConfigError, apply_overrides
from minilvlm.train.dry_run import dry_run, format_report
from minilvlm.train.loop import train


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python tools/train.py", description=__doc__.split("\n")[1].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("args", nargs="*", help="[CONFIG.toml] [section.key=value ...]")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    parser.add_argument("--dry-run", action="store_true",
                        help="build the model on the meta device, run one training step on it and print the "
                             "parameter counts and the memory per rank; reads no data or weights")
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="with --dry-run: the number of processes (ranks) to size memory for (default 1)")
    ns = parser.parse_args(argv)
    if ns.nproc < 1:
        parser.error("--nproc must be at least 1")
    config_path = None
    overrides = list(ns.args)
    if overrides and "=" not in overrides[0]:
        config_path = overrides.pop(0)
    try:
        if ns.resume:
            if config_path:
                raise ConfigError("--resume reads the run's own config.json; pass only overrides")
            saved = Path(ns.resume) / "config.json"
            if not saved.is_file():
                raise ConfigError(f"--resume {ns.resume}: {saved} not found (not a run folder?)")
            cfg = recipes.config_from_dict(json.loads(saved.read_text()), str(saved))
            cfg = recipes.validate(apply_overrides(cfg, overrides))
            cfg.train.run_dir = ns.resume
        else:
            notes = []
            cfg = recipes.load_config(config_path, overrides, notes)
            for note in notes:   # what was read from the weights folders, the template picked
                print(f"config: {note}", file=sys.stderr)
        if ns.dry_run:
            print(format_report(dry_run(cfg, ns.nproc), config_path or "the demo config"))
            return 0
        train(cfg, resume=bool(ns.resume))
    except ConfigError as err:   # also raised while building the run (e.g. a weights path that does not fit)
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
