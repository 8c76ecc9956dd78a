"""Read JSON and JSONL files record by record, with the line each record starts on.

A JSON file whose top level is an array (LLaVA, Alpaca) or an object (ScienceQA's problems.json)
is walked one element at a time with `raw_decode`, so every record knows its line. Bytes are
decoded with `surrogateescape`: invalid UTF-8 inside one record becomes that record's error
("invalid_utf8") instead of failing the whole file. A JSONL line that is not JSON is that line's
error; a syntax error in a JSON file stops the file (nothing after it can be located), so it is
always raised, and so is anything after the top-level array or object (a second array would
otherwise be dropped without a word).

Values that are well-formed but past the decoder's limits (nested deeper than Python's recursion
allows, integers of more than 4,300 digits) or past ours (`MAX_DEPTH` levels: no record format
nests deeper than a few) are that record's error (`json_limit`): the record's end is found by a
scanner that needs no recursion, and reading goes on after it.
"""
import json
from pathlib import Path

from minilvlm.data.errors import DataError

_DECODER = json.JSONDecoder()
_WS = " \t\r\n"
MAX_DEPTH = 64


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
    """Raise if any string in a decoded JSON value came from invalid UTF-8 bytes, or if the value
    nests deeper than MAX_DEPTH. Iterative: a deep value cannot exhaust the stack here."""
    todo = [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise DataError("the record holds invalid UTF-8 bytes; re-encode the file as UTF-8",
                                reason="invalid_utf8") from None
        elif isinstance(item, (list, dict)):
            if depth > MAX_DEPTH:
                raise DataError(f"the record nests deeper than {MAX_DEPTH} levels", reason="json_limit")
            children = item.items() if isinstance(item, dict) else ((None, v) for v in item)
            for key, child in children:
                if key is not None:
                    todo.append((key, depth))
                todo.append((child, depth + 1))


def _value_end(text, pos):
    """The end of the JSON value that starts at pos, found without recursion (for a value the decoder
    refused for its depth or size), or None when the text is not well-formed there."""
    depth, i, n = 0, pos, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i += 1
            while True:
                j = min((k for k in (text.find('"', i), text.find("\\", i)) if k >= 0), default=-1)
                if j < 0:
                    return None
                if text[j] == "\\":
                    i = j + 2
                    continue
                i = j + 1
                break
        elif c in "[{":
            depth, i = depth + 1, i + 1
        elif c in "]}":
            if depth == 0:
                return i
            depth, i = depth - 1, i + 1
        elif depth == 0 and (c in _WS or c in ",:"):
            return i
        else:
            i += 1
        if depth == 0 and c in '"]}':
            return i
    return i if depth == 0 else None


def _decode(text, pos):
    """(value or a json_limit DataError, end) of the value at pos; JSONDecodeError for bad syntax."""
    try:
        return _DECODER.raw_decode(text, pos)
    except json.JSONDecodeError:
        raise
    except (RecursionError, ValueError) as exc:   # too deep for the decoder, or an integer too long
        end = _value_end(text, pos)
        if end is None or end == pos:
            raise json.JSONDecodeError("a value the decoder cannot read", text, pos) from None
        what = "nests too deeply to decode" if isinstance(exc, RecursionError) else f"cannot be decoded ({exc})"
        return DataError(f"the record {what}", reason="json_limit"), end


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
            _check_trailing(path, text, pos + 1)
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
            value, pos = _decode(text, pos)
        except json.JSONDecodeError as exc:
            raise _syntax_error(path, text, exc) from None
        pos = _skip_ws(text, pos)
        yield line, key, value if isinstance(value, DataError) else _checked(value, key)


def _check_trailing(path, text, pos):
    """Only white space may follow the top-level array or object."""
    pos = _skip_ws(text, pos)
    if pos < len(text):
        line = text.count("\n", 0, pos) + 1
        raise DataError("extra data after the top-level JSON value (a second array, or text?); the file must "
                        "hold one array or object, or use .jsonl for one record per line", reason="json_syntax",
                        file=path, line=line)


def _iter_jsonl(path, text):
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            value = DataError(f"this line is not valid JSON ({exc.msg} at column {exc.colno})",
                              reason="json_syntax")
        except (RecursionError, ValueError) as exc:
            value = DataError(f"this line cannot be decoded ({type(exc).__name__}: {str(exc)[:120]})",
                              reason="json_limit")
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
