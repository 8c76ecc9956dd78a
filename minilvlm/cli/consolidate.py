"""Write an FSDP run's sharded checkpoint as one model.safetensors beside its shards.

    minilvlm-consolidate RUN_DIR/checkpoints/step_000500
    minilvlm-consolidate RUN_DIR                               # its newest checkpoint

(`python tools/consolidate.py` is the same command.) The shards (checkpoints/step_N/dcp/, written by
torch.distributed.checkpoint) are gathered in this one process into the model that the checkpoint's
config builds; the file holds what a one-process run's checkpoint holds.
"""
import sys

from minilvlm.cli.common import parser_for, run
from minilvlm.export import consolidate_checkpoint


def _parser():
    parser = parser_for(__doc__)
    parser.add_argument("path", metavar="CHECKPOINT", help="a checkpoint folder, or a run folder (its newest)")
    return parser


def _body(ns):
    out, count, values = consolidate_checkpoint(ns.path)
    print(f"{count} tensors ({values:,} values) -> {out}")


def main(argv=None):
    return run(_parser(), _body, argv)


if __name__ == "__main__":
    sys.exit(main())
