"""The one error path of every command. A mistake in what the user gave (a config value, a file that
is missing or damaged, a record, weights that do not fit) is one line, `error: <what and where>`, on
stderr with exit code 2; `--debug` shows the traceback instead. Warnings print as `warning: ...`.
Anything else is a bug in minilvlm and keeps its traceback."""
import argparse
import sys
import warnings

import torch.distributed

from minilvlm.config import ConfigError
from minilvlm.curation.soup import SoupError
from minilvlm.data.errors import DataError
from minilvlm.device import DeviceError
from minilvlm.eval.load import LoadError
from minilvlm.export import ExportError
from minilvlm.io import WeightsError
from minilvlm.recipes.run_folder import CheckpointError
from minilvlm.train.checkpoint import TrainingError
from minilvlm.train.distributed import is_collective_failure

# The project's error types, and the files and memory a user's command names or needs.
USER_ERRORS = (ConfigError, DataError, WeightsError, CheckpointError, LoadError, SoupError, ExportError, DeviceError,
               TrainingError, OSError, MemoryError, torch.distributed.DistError)
EXIT_USER_ERROR = 2


def parser_for(doc, **kwargs):
    """An ArgumentParser whose --help shows the docstring's first line once, then the rest as the
    epilog; with --debug."""
    first, _, rest = doc.strip().partition("\n")
    parser = argparse.ArgumentParser(description=first, epilog=rest.strip("\n") or None,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    return parser


def describe(err):
    """One line for an error: its message with its lines joined; a file error with its path."""
    if isinstance(err, OSError) and err.strerror:
        text = f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    elif isinstance(err, MemoryError):
        text = f"out of memory{': ' + str(err) if str(err) else ''} (a smaller batch, model or image limit?)"
    elif is_collective_failure(err):
        text = f"a collective failed, a peer rank probably died or stopped: {str(err).splitlines()[0] if str(err) else ''}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=file or sys.stderr)


def run(parser, body, argv=None):
    """Parse argv, call body(namespace) (its return value is the exit code, None meaning 0) and turn a
    user's mistake into `error: ...` and exit code 2."""
    ns = parser.parse_args(argv)
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return body(ns) or 0
    except Exception as err:
        if ns.debug or not (isinstance(err, USER_ERRORS) or is_collective_failure(err)):
            raise
        print(f"error: {describe(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        if ns.debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = previous
