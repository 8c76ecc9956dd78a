"""The worker of one fine-tuning trial (minilvlm/curation/trials.py starts it as a process of its own):

    python -m minilvlm.cli.trial TRIAL_DIR

trains the config in TRIAL_DIR/trial.json into its run_dir (TRIAL_DIR/run), starting that folder
afresh. A mistake in the config is one `error:` line and exit code 2, as in every command; the
pipeline that started the trial reports the end of its log."""
import json
import sys
from pathlib import Path

from minilvlm import recipes
from minilvlm.cli.common import parser_for, run
from minilvlm.config import ConfigError
from minilvlm.train.loop import train


def _parser():
    parser = parser_for(__doc__)
    parser.add_argument("folder", metavar="TRIAL_DIR", help="a trial folder holding trial.json")
    return parser


def _body(ns):
    spec = Path(ns.folder) / "trial.json"
    try:
        config = json.loads(spec.read_text())
    except ValueError as err:
        raise ConfigError(f"{spec}: not JSON: {err}") from None
    cfg = recipes.validate(recipes.config_from_dict(config, str(spec)), check_paths=True)
    train(cfg, overwrite=True)


def main(argv=None):
    return run(_parser(), _body, argv)


if __name__ == "__main__":
    sys.exit(main())
