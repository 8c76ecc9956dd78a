"""Read JSON and JSONL files record by record, with the line each record starts on.

A JSON file whose top level is an array (LLaVA, Alpaca) or an object (ScienceQA's problems.json)
is walked one element at a time with `raw_decode`, so every record knows its line. Bytes are
decoded with `surrogateescape`: invalid UTF-8 inside one record becomes that record's error
("invalid_utf8") instead of failing the whole file. A JSONL line that is not JSON is that line's
error; a syntax error in a JSON file stops the file (nothing after it can be located), so it is
always raised.
"""
import json
from pathlib import Path

from minilvlm.data.errors import DataError

_DECODER = json.JSONDecoder()
_WS = " \t\r\n"


def read_text(path):
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read the file: {exc.strerror or exc}", reason="unreadable_file",
                        file=path) from None
    if data.startswith(b"\xef\xbb\xbf"):   # a UTF-8 byte-order mark, as some editors write
        data = data[3:]
    return data.decode("utf-8", errors="surrogateescape")


def check_utf8(value):
    """Raise if any string in a decoded JSON value came from invalid UTF-8 bytes."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError("the record holds invalid UTF-8 bytes; re-encode the file as UTF-8",
                            reason="invalid_utf8") from None
    elif isinstance(value, list):
        for item in value:
            check_utf8(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_utf8(key)
            check_utf8(item)


def _skip_ws(text, pos):
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def _syntax_error(path, text, exc):
    line = text.count("\n", 0, exc.pos) + 1
    return DataError(f"invalid JSON ({exc.msg}); the records after this point cannot be read, "
                     "fix the file", reason="json_syntax", file=path, line=line)


def iter_json(path, text=None):
    """Yield (line, key, value) for each element of a top-level JSON array (key is None) or
    object (key is the member name), or of a JSONL file (one value per non-blank line). Values
    that fail to parse (JSONL) or hold invalid UTF-8 come as a DataError in place of the value."""
    path = Path(path)
    text = read_text(path) if text is None else text
    if path.suffix == ".jsonl":
        yield from _iter_jsonl(path, text)
        return
    pos = _skip_ws(text, 0)
    if pos == len(text) or text[pos] not in "[{":
        raise DataError("expected a JSON array or object at the top level (use .jsonl for one "
                        "record per line)", reason="json_syntax", file=path, line=1)
    closing = "]" if text[pos] == "[" else "}"
    pos, line, line_pos = _skip_ws(text, pos + 1), 1, 0
    first = True
    while True:
        if pos < len(text) and text[pos] == closing:
            return
        if not first:
            if pos >= len(text) or text[pos] != ",":
                raise _syntax_error(path, text, json.JSONDecodeError("expected ',' or the end", text, pos))
            pos = _skip_ws(text, pos + 1)
        first = False
        try:
            key = None
            if closing == "}":
                key, pos = _DECODER.raw_decode(text, pos)
                pos = _skip_ws(text, pos)
                if pos >= len(text) or text[pos] != ":" or not isinstance(key, str):
                    raise json.JSONDecodeError("expected a member name and ':'", text, pos)
                pos = _skip_ws(text, pos + 1)
            line += text.count("\n", line_pos, pos)
            line_pos = pos
            value, pos = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise _syntax_error(path, text, exc) from None
        pos = _skip_ws(text, pos)
        yield line, key, _checked(value, key)


def _iter_jsonl(path, text):
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            value = DataError(f"this line is not valid JSON ({exc.msg} at column {exc.colno})",
                              reason="json_syntax")
        else:
            value = _checked(value, None)
        yield number, None, value


def _checked(value, key):
    try:
        check_utf8(value)
        if key is not None:
            check_utf8(key)
    except DataError as err:
        return err
    return value
