"""Sharded checkpoints of ZeroAdamW, re-sliced on load, and their consolidation.

A checkpoint folder holds one safetensors file per rank (its slice of exp_avg, exp_avg_sq and
masters for every flat buffer) and one manifest, optim.json: the layout of every buffer (param
index, shape, offset), each rank's global [begin, end), the steps and the param-group
hyperparameters. Because slices carry global offsets, a folder written at world size N loads at
any world size M, and consolidate() turns it into one torch.optim.AdamW-style state.
"""
import json
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open

from minilvlm.io import atomic_save_safetensors, atomic_write_json

MANIFEST = "optim.json"
STATE_KEYS = ("exp_avg", "exp_avg_sq", "master")


def _shard_file(rank, world_size):
    return f"optim-rank{rank:05d}-of-{world_size:05d}.safetensors"


def _layout(opt):
    buffers = []
    for flat in opt._flats:
        buffers.append({
            "dtype": str(flat.dtype).removeprefix("torch."),
            "used": flat.used,
            "shard_size": flat.shard[1] - flat.shard[0],
            "master": flat.master is not None,
            "params": [{"index": opt._param_index[p], "shape": list(p.shape), "offset": off}
                       for p, off in zip(flat.params, flat.offsets)],
            "steps": list(flat.steps),
        })
    return buffers


def save_sharded(opt, directory):
    """Every rank writes its slices; rank 0 writes the manifest last. Collective: call on all ranks."""
    directory = Path(directory)
    tensors = {}
    for k, flat in enumerate(opt._flats):
        for key in STATE_KEYS:
            if getattr(flat, key) is not None:
                tensors[f"{k}.{key}"] = getattr(flat, key)
    atomic_save_safetensors(tensors, directory / _shard_file(opt.rank, opt.world_size),
                            metadata={"rank": str(opt.rank), "world_size": str(opt.world_size)})
    dist.barrier(group=opt.process_group)
    if opt.rank == 0:
        groups = [dict({k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"},
                       num_params=len(g["params"])) for g in opt.param_groups]
        atomic_write_json({"format": "minilvlm-zero1", "world_size": opt.world_size, "buffers": _layout(opt),
                           "param_groups": groups,
                           "files": [_shard_file(r, opt.world_size) for r in range(opt.world_size)]},
                          directory / MANIFEST)
    dist.barrier(group=opt.process_group)


def read_manifest(directory):
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path}: no ZeRO optimizer manifest (was the checkpoint written completely?)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != "minilvlm-zero1":
        raise ValueError(f"{path}: not a minilvlm ZeRO-1 checkpoint (format {manifest.get('format')!r})")
    for name in manifest["files"]:
        if not (Path(directory) / name).exists():
            raise FileNotFoundError(f"{Path(directory) / name}: shard listed in {path} is missing")
    return manifest


def _read_range(directory, manifest, k, key, begin, end, out):
    """Copy the global range [begin, end) of state `key` of buffer k from the shard files into out."""
    size = manifest["buffers"][k]["shard_size"]
    for rank, name in enumerate(manifest["files"]):
        lo, hi = max(begin, rank * size), min(end, (rank + 1) * size)
        if lo >= hi:
            continue
        with safe_open(str(Path(directory) / name), framework="pt") as f:
            out[lo - begin:hi - begin].copy_(f.get_slice(f"{k}.{key}")[lo - rank * size:hi - rank * size])


def load_sharded(opt, directory):
    """Load a checkpoint written at any world size into this rank's slices."""
    manifest = read_manifest(directory)
    saved, ours = manifest["buffers"], _layout(opt)
    problems = []
    if len(saved) != len(ours):
        problems.append(f"{len(saved)} flat buffers saved, {len(ours)} now")
    for k, (a, b) in enumerate(zip(saved, ours)):
        for field in ("dtype", "used", "params"):
            if a[field] != b[field]:
                problems.append(f"buffer {k}: {field} differs (saved {str(a[field])[:200]}, now {str(b[field])[:200]})")
    if len(manifest["param_groups"]) != len(opt.param_groups):
        problems.append(f"{len(manifest['param_groups'])} param groups saved, {len(opt.param_groups)} now")
    if problems:
        raise ValueError(f"{directory}: checkpoint does not match this optimizer:\n  " + "\n  ".join(problems))
    for group, saved_group in zip(opt.param_groups, manifest["param_groups"]):
        for key, value in saved_group.items():
            if key != "num_params":
                group[key] = tuple(value) if key == "betas" else value
    with torch.no_grad():
        for k, (flat, info) in enumerate(zip(opt._flats, saved)):
            lo, hi = flat.shard
            end = min(hi, info["used"])
            for key in STATE_KEYS:
                target = getattr(flat, key)
                if target is None:
                    continue
                target.zero_()
                if key == "master" and not info["master"]:
                    target.copy_(opt.shard_of(flat).float())
                elif lo < end:
                    _read_range(directory, manifest, k, key, lo, end, target[:end - lo])
            flat.steps = list(info["steps"])
    opt._cached_runs = [None] * len(opt._flats)


def consolidate(directory):
    """One full torch.optim.AdamW-style state_dict from a sharded checkpoint, with no process group;
    FusedAdamW.load_state_dict and torch.optim.AdamW.load_state_dict accept it."""
    manifest = read_manifest(directory)
    state = {}
    for k, info in enumerate(manifest["buffers"]):
        full = {}
        for key in STATE_KEYS:
            if key == "master" and not info["master"]:
                continue
            full[key] = torch.zeros(info["used"], dtype=torch.float32)
            _read_range(directory, manifest, k, key, 0, info["used"], full[key])
        for param, step in zip(info["params"], info["steps"]):
            n = 1
            for d in param["shape"]:
                n *= d
            entry = {"step": torch.tensor(float(step))}
            for key, values in full.items():
                entry[key] = values[param["offset"]:param["offset"] + n].view(param["shape"]).clone()
            state[param["index"]] = entry
    groups, start = [], 0
    for group in manifest["param_groups"]:
        size = group["num_params"]
        hyper = {k: v for k, v in group.items() if k != "num_params"}
        groups.append(dict(hyper, params=list(range(start, start + size))))
        start += size
    return {"state": state, "param_groups": groups}


def save_consolidated(directory, path):
    """Write consolidate(directory) as one safetensors file (keys state.<index>.<name>) plus
    <path>.json with the param groups."""
    full = consolidate(directory)
    tensors = {f"state.{i}.{key}": t for i, entry in full["state"].items() for key, t in entry.items()}
    atomic_save_safetensors(tensors, path)
    atomic_write_json({"param_groups": full["param_groups"]}, str(path) + ".json")
