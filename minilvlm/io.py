"""Atomic file writes: write a temp file in the same folder, fsync it, rename it over the target,
then fsync the folder. A reader (or a resumed run) sees the old file or the new one, never half.
And the one checked way to read a safetensors file (`load_safetensors`, below)."""
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


def _atomic(path, write):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temp_files(folder):
    """Delete the temp files `_atomic` leaves when its process is killed mid-write (`.NAME.*.tmp`),
    anywhere under `folder`; returns how many. Call it only while nothing writes there."""
    removed = 0
    for path in Path(folder).rglob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def atomic_save_safetensors(tensors, path, metadata=None):
    """safetensors.torch.save_file, atomically. Tensors are made contiguous (safetensors needs it)."""
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    _atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def atomic_write_json(obj, path):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
    _atomic(path, write)


def atomic_write_text(text, path):
    _atomic(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_with(path, write):
    """Atomically write a file through write(tmp_path), for writers that take a path."""
    _atomic(path, write)


# ---- checked safetensors reads --------------------------------------------------------------------
# Every safetensors file minilvlm reads (our checkpoints, pretrained weights, Hugging Face shards)
# goes through `read_safetensors_header` first: the header's length is checked against the file's
# size before anything is parsed (a text file read as weights claims a header of exabytes), and
# every tensor's dtype, shape and byte range against the file, so that the safetensors library is
# only ever handed a well-formed file.

class WeightsError(ValueError):
    """A weights or checkpoint file that cannot be used, naming the file (and the config key that led
    there, when one did) and every problem found."""


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "C64": torch.complex64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool,
}
_DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
# The dtypes a floating parameter may be loaded from (and cast): weights are shipped in these.
FLOAT_SOURCES = ("F64", "F32", "F16", "BF16")
MAX_HEADER_BYTES = 100 << 20   # the safetensors library's own limit


def describe_file(path, key=None):
    """How an error names a file: with the config key that named it, when there is one."""
    return f"{key} = '{path}'" if key else str(path)


def _entry_problem(name, entry, data_bytes):
    if not isinstance(entry, dict):
        return f"tensor {name!r}: its header entry is not an object"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPES:
        return f"tensor {name!r}: unknown dtype {dtype!r}"
    if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                              for n in shape):
        return f"tensor {name!r}: bad shape {shape!r}"
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_bytes):
        return f"tensor {name!r}: byte range {offsets!r} lies outside the file's {data_bytes} data bytes (truncated?)"
    count = 1
    for n in shape:
        count *= n
    if count * SAFETENSORS_DTYPES[dtype].itemsize != offsets[1] - offsets[0]:
        return f"tensor {name!r}: {dtype} {shape} needs {count * SAFETENSORS_DTYPES[dtype].itemsize} bytes, " \
               f"its byte range holds {offsets[1] - offsets[0]}"
    return None


def read_safetensors_header(path, key=None):
    """{tensor name: {dtype, shape, data_offsets}} of a safetensors file, every entry checked against
    the file's size; WeightsError naming the file (and `key`) otherwise."""
    where = describe_file(path, key)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else None
            if length is None or length > min(size - 8, MAX_HEADER_BYTES):
                raise WeightsError(f"{where}: not a readable safetensors file: its first 8 bytes claim a header of "
                                   f"{length if length is not None else '?'} bytes, but the file has {size} bytes "
                                   f"(a different kind of file, or truncated)")
            raw = f.read(length)
    except OSError as err:
        raise WeightsError(f"{where}: cannot read the file: {err.strerror or err}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise WeightsError(f"{where}: not a readable safetensors file: its header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{where}: not a readable safetensors file: its header is not a JSON object")
    header.pop("__metadata__", None)
    data_bytes = size - 8 - length
    problems = [p for name, entry in header.items() if (p := _entry_problem(name, entry, data_bytes))]
    if problems:
        raise WeightsError(f"{where}: not a readable safetensors file, truncated or damaged ({len(problems)} problems): " + "; ".join(problems[:8]))
    return header


def dtype_problems(header, expected, where):
    """Tensors whose stored dtype cannot become the expected tensor's: a floating parameter loads from
    F64/F32/F16/BF16 only (int, bool, complex or float8 bytes are not weights of ours), anything else
    must match exactly. `header`: {name: header entry or tensor}; `expected`: {name: tensor or dtype}."""
    problems = []
    for name, want in expected.items():
        if name not in header:
            continue
        want = getattr(want, "dtype", want)
        entry = header[name]
        stored = entry["dtype"] if isinstance(entry, dict) else _DTYPE_NAMES.get(entry.dtype, str(entry.dtype))
        ok = stored in FLOAT_SOURCES if want.is_floating_point else SAFETENSORS_DTYPES.get(stored) == want
        if not ok:
            problems.append(f"{name} is stored as {stored}, the model needs {str(want).replace('torch.', '')}")
    if problems:
        return f"{where}: wrong tensor dtypes ({len(problems)}): " + "; ".join(problems[:8])
    return None


def load_safetensors(path, key=None, expected=None):
    """{name: tensor} of a safetensors file, read after `read_safetensors_header` checked it; with
    `expected` ({name: tensor}) the dtypes are checked too (`dtype_problems`). Never unpickles."""
    where = describe_file(path, key)
    header = read_safetensors_header(path, key)
    problem = dtype_problems(header, expected or {}, where)
    if problem:
        raise WeightsError(problem)
    try:
        return load_file(str(path))
    except Exception as err:   # the library's own error types; the header checks above make this rare
        raise WeightsError(f"{where}: cannot read the tensors: {err}") from None


def read_json_object(path, error=ValueError):
    """The JSON object in a file; `error` (naming the file) for an unreadable file, invalid UTF-8 or
    JSON, or a top level that is not an object."""
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except OSError as err:
        raise error(f"{path}: cannot read it: {err.strerror or err}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise error(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


# ---- safetensors folders (a Hugging Face checkpoint: one file, or shards and an index) ------------

_FILE_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class _Shard:
    """One safetensors file: its header checked against the file first (minilvlm.io), then tensors
    memory-mapped. A tensor cast to another dtype is read with plain file reads instead, so its source
    bytes never stay mapped in memory: casting then holds the result plus one tensor, not the result
    plus the whole mapped file."""

    def __init__(self, path, key=None):
        self.path = path
        self.header = read_safetensors_header(path, key)
        self._data_start = 8 + int.from_bytes(Path(path).open("rb").read(8), "little")
        try:
            self.handle = safe_open(str(path), framework="pt", device="cpu")
        except Exception as exc:  # safetensors raises its own error types for a bad header or short file
            raise WeightsError(f"{path}: not a readable safetensors file ({exc}). It is probably truncated or "
                               f"corrupt: download or save it again") from None

    def keys(self):
        return list(self.header)

    def shape(self, key):
        return list(self.header[key]["shape"])

    def entry(self, key):
        """The tensor's checked header entry (dtype, shape, data_offsets)."""
        return self.header[key]

    def tensor(self, key, dtype=None):
        entry = self.header[key]
        source = _FILE_DTYPES.get(entry["dtype"])
        if dtype is None or source is None or source == dtype:
            return self.handle.get_tensor(key)
        begin, end = entry["data_offsets"]
        buffer = torch.empty(end - begin, dtype=torch.uint8)
        with open(self.path, "rb") as f:
            f.seek(self._data_start + begin)
            if f.readinto(buffer.numpy()) != end - begin:
                raise WeightsError(f"{self.path}: tensor {key} ends past the end of the file; it is truncated")
        return buffer.view(source).view(entry["shape"]).to(dtype)


def _shard_path(folder, name, index):
    """A shard named by the index, refused unless it is a plain relative path inside the folder."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise WeightsError(f"{index}: a shard name must be a file name, got {name!r}")
    path = Path(folder, name)
    inside = Path(folder).resolve()
    if Path(name).is_absolute() or ".." in Path(name).parts or not path.resolve().is_relative_to(inside):
        raise WeightsError(f"{index}: shard {name!r} lies outside {folder}; shards must be files inside the folder")
    if not path.is_file():
        raise WeightsError(f"{index} names shard files that are not in {folder}: [{name!r}]")
    return path


def _read_index(index, folder):
    data = read_json_object(index, WeightsError)
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(k, str) for k in weight_map):
        raise WeightsError(f"{index}: not a safetensors index: need a JSON object with a 'weight_map' object "
                           f"of tensor name -> shard file, got {type(weight_map).__name__}")
    return {name: _shard_path(folder, name, index) for name in sorted(set(weight_map.values()))}, weight_map


def open_checkpoint(folder):
    """{checkpoint key: the _Shard holding it} for a single-file or sharded checkpoint. A sharded one
    must keep its shards inside the folder, and no tensor may be held by two shards."""
    folder = Path(folder)
    index, single = folder / "model.safetensors.index.json", folder / "model.safetensors"
    if index.is_file():
        paths, weight_map = _read_index(index, folder)
        where, twice = {}, []
        for name, path in paths.items():
            handle = _Shard(path)
            for key in handle.keys():
                if key in where:
                    twice.append(f"{key} ({where[key].path.name} and {name})")
                where[key] = handle
        if twice:
            raise WeightsError(f"{index}: tensors held by two shards, which copy is meant is unknown: {twice[:20]}")
        listed_elsewhere = sorted(k for k, f in weight_map.items() if k not in where or where[k].path.name != Path(f).name)
        if listed_elsewhere:
            raise WeightsError(f"{index} lists tensors its shards do not hold: {listed_elsewhere[:20]}")
        return where
    if single.is_file():
        handle = _Shard(single)
        return {key: handle for key in handle.keys()}
    pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
    hint = (f" It holds {pickled}: pickled weights are never loaded; convert them to safetensors first."
            if pickled else "")
    raise WeightsError(f"{folder}: no model.safetensors or model.safetensors.index.json.{hint}")
