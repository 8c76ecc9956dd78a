"""One entry point for every data set format a run or a tool reads: a LLaVA or Alpaca file (.json
array or .jsonl) or a ScienceQA release folder, named explicitly or detected (`auto`).

Detection: a folder holding problems.json is ScienceQA; in a file, the first record decides:
`instruction` without `conversations` is Alpaca, anything else LLaVA (whose reader then says what
is wrong with a record that is neither)."""
from pathlib import Path

from minilvlm.data.errors import DataError, SkipCounter, check_on_error
from minilvlm.data.jsonfile import iter_json
from minilvlm.data.records import read_records
from minilvlm.data.scienceqa import read_scienceqa

FORMATS = ("auto", "llava", "alpaca", "scienceqa")


def detect_format(path):
    """"scienceqa", "alpaca" or "llava" for an existing file or folder."""
    path = Path(path)
    if path.is_dir():
        if (path / "problems.json").is_file():
            return "scienceqa"
        raise DataError("a folder given as data must be a ScienceQA release (problems.json, pid_splits.json, "
                        "images/)", reason="unreadable_file", file=path)
    for _, _, obj in iter_json(path):
        if isinstance(obj, dict) and "instruction" in obj and "conversations" not in obj:
            return "alpaca"
        return "llava"
    raise DataError("the file holds no records", reason="empty_file", file=path)


def read_data(path, fmt="auto", image_root=None, split="train", on_error="raise", skips=None):
    """(records, the format read) of a data file or folder; `split` picks a ScienceQA split, and
    `image_root` is the LLaVA images' folder (default: the file's) or ScienceQA's images/ folder."""
    check_on_error(on_error)
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; expected one of {', '.join(FORMATS)}")
    path = Path(path)
    if not path.exists():
        raise DataError("no such file or folder", reason="unreadable_file", file=path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    skips = skips if skips is not None else SkipCounter()
    if fmt == "scienceqa":
        if not path.is_dir():
            raise DataError("the scienceqa format reads a release folder (problems.json, pid_splits.json, images/)",
                            reason="unreadable_file", file=path)
        return read_scienceqa(path, split, image_dir=image_root, on_error=on_error, skips=skips), fmt
    if path.is_dir():
        hint = ' (a ScienceQA release: format "scienceqa" or "auto")' if (path / "problems.json").is_file() else ""
        raise DataError(f"the {fmt} format reads a .json or .jsonl file, and this is a folder{hint}",
                        reason="unreadable_file", file=path)
    return read_records(path, fmt, image_root=image_root, on_error=on_error, skips=skips), fmt


def scienceqa_splits(path):
    """The split names of a ScienceQA release folder (pid_splits.json's keys)."""
    return [key for _, key, _ in iter_json(Path(path) / "pid_splits.json")]
