"""Training records and the readers of LLaVA conversations and Alpaca instructions.

Every reader turns a file into `Record`s: a conversation of (role, text) turns with roles
"system", "user" and "assistant", the `<image>` placeholders inside the user turns, and the image
paths (already resolved under the image root and checked to exist; decoding happens later, in
DataLoader workers). Bad records follow the on_error policy (see errors.py).
ScienceQA has its own reader in scienceqa.py.
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from minilvlm.data.errors import DataError, SkipCounter, check_on_error, handle
from minilvlm.data.images import resolve_image_path
from minilvlm.data.jsonfile import iter_json

IMAGE_TAG = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "system": "system"}


class Turn(NamedTuple):
    role: str   # "system" | "user" | "assistant"
    text: str


@dataclass
class Record:
    id: str
    turns: list
    images: list = field(default_factory=list)   # resolved Paths, in <image> order
    source: str = ""                             # file the record came from
    line: int = None
    meta: dict = field(default_factory=dict)     # question type, subject, answer, ...

    @property
    def has_image(self):
        return bool(self.images)


def _require(obj, key, kinds, what, allow_missing=False):
    if key not in obj or obj[key] is None:
        if allow_missing:
            return None
        raise DataError(f"missing field {key!r} ({what})", reason="missing_field")
    value = obj[key]
    if not isinstance(value, kinds) or isinstance(value, bool):
        names = " or ".join(k.__name__ for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
        raise DataError(f"field {key!r} must be {names}, got {type(value).__name__}",
                        reason="wrong_type")
    return value


def _record_id(obj, default):
    value = _require(obj, "id", (str, int), "the record id", allow_missing=True)
    return default if value is None else str(value)


def _image_list(obj):
    value = obj.get("image")
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise DataError(f"field 'image' must be a path or a list of paths, got {type(value).__name__}",
                    reason="wrong_type")


def check_turns(turns, n_images):
    """Validate roles, their order and the <image> tags; add missing tags (LLaVA's convention:
    an image with no tag goes before the first user turn's text). Returns the turns."""
    if not turns:
        raise DataError("the conversation is empty", reason="empty_conversation")
    body = turns[1:] if turns[0].role == "system" else turns
    for i, turn in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if turn.role != expected:
            raise DataError(f"turn {i + len(turns) - len(body)} is {turn.role!r} where {expected!r} "
                            "was expected (turns alternate user/assistant)", reason="bad_turn_order")
    if not body or body[-1].role != "assistant":
        raise DataError("the conversation does not end with an assistant reply", reason="bad_turn_order")
    if any(IMAGE_TAG in t.text for t in turns if t.role != "user"):
        raise DataError(f"{IMAGE_TAG} appears outside a user turn", reason="image_tags")
    n_tags = sum(t.text.count(IMAGE_TAG) for t in turns)
    if n_tags == 0 and n_images:
        first = turns.index(body[0])
        turns = list(turns)
        turns[first] = Turn("user", f"{IMAGE_TAG}\n" * n_images + turns[first].text)
    elif n_tags != n_images:
        more = "more" if n_tags > n_images else "fewer"
        raise DataError(f"{n_tags} {IMAGE_TAG} tag(s) but {n_images} image(s): {more} tags than "
                        "images", reason="image_tags")
    return turns


def parse_llava(obj, default_id, image_root):
    if not isinstance(obj, dict):
        raise DataError(f"a record must be a JSON object, got {type(obj).__name__}", reason="wrong_type")
    record_id = _record_id(obj, default_id)
    try:
        conversation = _require(obj, "conversations", list, "the list of turns")
        turns = []
        for i, turn in enumerate(conversation):
            if not isinstance(turn, dict):
                raise DataError(f"turn {i} must be an object, got {type(turn).__name__}", reason="wrong_type")
            role = _require(turn, "from", str, f"turn {i}'s speaker")
            if role not in ROLES:
                raise DataError(f"turn {i} has unknown role {role!r}; expected one of "
                                f"{sorted(ROLES)}", reason="unknown_role")
            turns.append(Turn(ROLES[role], _require(turn, "value", str, f"turn {i}'s text")))
        names = _image_list(obj)
        turns = check_turns(turns, len(names))
        images = [resolve_image_path(image_root, name) for name in names]
    except DataError as err:
        raise err.at(record_id=record_id) from None
    meta = {k: v for k, v in obj.items() if k not in ("id", "image", "conversations")}
    meta.setdefault("has_image", bool(images))
    return Record(record_id, turns, images, meta=meta)


def parse_alpaca(obj, default_id, image_root=None):
    if not isinstance(obj, dict):
        raise DataError(f"a record must be a JSON object, got {type(obj).__name__}", reason="wrong_type")
    record_id = _record_id(obj, default_id)
    try:
        instruction = _require(obj, "instruction", str, "the task")
        extra = _require(obj, "input", str, "the task's input", allow_missing=True)
        output = _require(obj, "output", str, "the reply")
        if not instruction.strip():
            raise DataError("field 'instruction' is empty", reason="empty_conversation")
        if IMAGE_TAG in instruction or IMAGE_TAG in (extra or ""):
            raise DataError(f"{IMAGE_TAG} in a text-only Alpaca record", reason="image_tags")
    except DataError as err:
        raise err.at(record_id=record_id) from None
    prompt = f"{instruction}\n{extra}" if extra else instruction
    meta = {"question_type": "text_instruction", "has_image": False}
    return Record(record_id, [Turn("user", prompt), Turn("assistant", output)], meta=meta)


PARSERS = {"llava": parse_llava, "alpaca": parse_alpaca}


def read_records(path, fmt="llava", image_root=None, on_error="raise", skips=None):
    """Read a LLaVA or Alpaca file (.json array or .jsonl). Image paths are resolved under
    `image_root` (default: the file's folder). Returns the good records; bad ones raise or are
    counted in `skips` (a SkipCounter) by reason."""
    check_on_error(on_error)
    if fmt not in PARSERS:
        raise ValueError(f"unknown record format {fmt!r}; expected one of {sorted(PARSERS)} "
                         "(ScienceQA: minilvlm.data.scienceqa.read_scienceqa)")
    path = Path(path)
    image_root = Path(image_root) if image_root is not None else path.parent
    skips = skips if skips is not None else SkipCounter()
    parse, records = PARSERS[fmt], []
    for line, _, obj in iter_json(path):
        try:
            if isinstance(obj, DataError):
                raise obj
            record = parse(obj, f"{path.name}:{line}", image_root)
        except DataError as err:
            handle(err.at(file=path, line=line), on_error, skips)
            continue
        record.source, record.line = str(path), line
        records.append(record)
    return records
