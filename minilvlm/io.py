"""Atomic file writes: write a temp file in the same folder, fsync it, rename it over the target,
then fsync the folder. A reader (or a resumed run) sees the old file or the new one, never half."""
import json
import os
import tempfile
from pathlib import Path

from safetensors.torch import save_file


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
