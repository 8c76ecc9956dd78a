"""Safetensors checkpoints on disk, single file or sharded (model.safetensors.index.json): each
tensor's shape read from the headers, the tensors memory-mapped. Nothing is ever unpickled."""
import json
from pathlib import Path

import torch
from safetensors import safe_open


class WeightsError(ValueError):
    """A checkpoint that does not fit the model: lists every problem at once."""


_FILE_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class _Shard:
    """One safetensors file: shapes from its header, tensors memory-mapped. A tensor cast to another
    dtype is read with plain file reads instead, so its source bytes never stay mapped in memory:
    casting then holds the result plus one tensor, not the result plus the whole mapped file."""

    def __init__(self, path):
        self.path = path
        try:
            self.handle = safe_open(str(path), framework="pt", device="cpu")
        except Exception as exc:  # safetensors raises its own error types for a bad header or short file
            raise WeightsError(f"{path}: not a readable safetensors file ({exc}). It is probably truncated or "
                               f"corrupt: download or save it again") from exc
        self._header = None

    def keys(self):
        return self.handle.keys()

    def shape(self, key):
        return list(self.handle.get_slice(key).get_shape())

    def tensor(self, key, dtype=None):
        entry = self._entry(key)
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

    def _entry(self, key):
        if self._header is None:
            with open(self.path, "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                self._header = json.loads(f.read(size))
            self._data_start = 8 + size
        return self._header[key]


def open_checkpoint(folder):
    """{checkpoint key: the _Shard holding it} for a single-file or sharded checkpoint."""
    folder = Path(folder)
    index, single = folder / "model.safetensors.index.json", folder / "model.safetensors"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise WeightsError(f"{index}: not a safetensors index (need a JSON object with 'weight_map'): {exc}") from exc
        missing = sorted({f for f in weight_map.values() if not (folder / f).is_file()})
        if missing:
            raise WeightsError(f"{index} names shard files that are not in {folder}: {missing}")
        handles = {name: _Shard(folder / name) for name in sorted(set(weight_map.values()))}
        where = {}
        for name, handle in handles.items():
            for key in handle.keys():
                where[key] = handle
        listed_elsewhere = sorted(k for k, f in weight_map.items() if k not in where)
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


