"""Train a vision-language model.

    minilvlm-train                                     # the embedded demo (CPU, a few minutes)
    minilvlm-train configs/x.toml optim.lr=1e-4        # a TOML config plus dotted overrides
    minilvlm-train --resume RUN_DIR [overrides]        # continue a run from its last checkpoint
    minilvlm-train configs/x.toml --overwrite          # start again in a run folder that is not empty
    minilvlm-train configs/x.toml --dry-run --nproc 8  # one step on the meta device, memory per rank
    torchrun --nproc_per_node 2 tools/train.py [...]   # data-parallel, ZeRO-1 sharded optimizer

(`python tools/train.py` is the same command.) train.device picks where the run computes (auto: a
GPU when torch sees one); under torchrun each rank takes its own GPU (cuda:LOCAL_RANK). A run folder
that is not empty is refused unless --resume continues it or --overwrite clears it.
"""
import sys
from pathlib import Path

from minilvlm import recipes
from minilvlm.cli.common import parser_for, run
from minilvlm.config import ConfigError, apply_overrides
from minilvlm.io import read_json_object
from minilvlm.train.dry_run import dry_run, format_report
from minilvlm.train.loop import train


def _parser():
    parser = parser_for(__doc__)
    parser.add_argument("args", nargs="*", help="[CONFIG.toml] [section.key=value ...]")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    parser.add_argument("--overwrite", action="store_true", help="clear a run folder that is not empty and start anew")
    parser.add_argument("--dry-run", action="store_true",
                        help="build the model on the meta device, run one training step on it and print the "
                             "parameter counts and the memory per rank; reads no data or weights")
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="with --dry-run: the number of processes (ranks) to size memory for (default 1)")
    return parser


def resumed_config(run_dir, overrides):
    """The config a run folder saved, with overrides, every value and path checked."""
    saved = Path(run_dir) / "config.json"
    if not saved.is_file():
        raise ConfigError(f"--resume {run_dir}: {saved} not found (not a run folder?)")
    cfg = recipes.config_from_dict(read_json_object(saved, ConfigError), str(saved))
    cfg = apply_overrides(cfg, overrides)
    cfg.train.run_dir = str(run_dir)
    return recipes.validate(cfg, check_paths=True)


def _body(ns):
    if ns.nproc < 1:
        raise ConfigError("--nproc must be at least 1")
    overrides = list(ns.args)
    config_path = overrides.pop(0) if overrides and "=" not in overrides[0] else None
    if ns.resume:
        if config_path:
            raise ConfigError("--resume reads the run's own config.json; pass only overrides")
        if ns.overwrite:
            raise ConfigError("--resume continues a run and --overwrite clears it; give one of them")
        cfg = resumed_config(ns.resume, overrides)
    else:
        notes = []
        cfg = recipes.load_config(config_path, overrides, notes, check_paths=not ns.dry_run)
        for note in notes:   # what was read from the weights folders, the template picked
            print(f"config: {note}", file=sys.stderr)
    if ns.dry_run:
        print(format_report(dry_run(cfg, ns.nproc), config_path or "the demo config"))
        return 0
    train(cfg, resume=bool(ns.resume), overwrite=ns.overwrite)
    return 0


def main(argv=None):
    return run(_parser(), _body, argv)


if __name__ == "__main__":
    sys.exit(main())
