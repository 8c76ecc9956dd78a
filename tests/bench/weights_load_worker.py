"""One load in a fresh process, so its peak RSS is clean: prints a JSON line with the peak RSS
above the baseline after importing torch, and the time to load and to read every weight once.
Usage: python -m tests.bench.weights_load_worker {minilvlm|minilvlm-bf16|load_file} FOLDER"""
import json
import resource
import sys
import time
from pathlib import Path

import torch

import minilvlm.weights  # noqa: F401  (imported before the baseline, like torch)
from safetensors.torch import load_file


def peak_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def read_all(tensors):
    """Touch every byte once (a forward pass would), so mapped pages count in RSS."""
    return sum(float(t.float().sum()) if t.dtype != torch.float32 else float(t.sum()) for t in tensors)


def main(mode, folder):
    baseline = peak_bytes()
    start = time.perf_counter()
    if mode == "load_file":
        state = {}
        for shard in sorted(Path(folder).glob("*.safetensors")):
            state.update(load_file(shard))
        tensors = list(state.values())
    else:
        dtype = torch.bfloat16 if mode == "minilvlm-bf16" else None
        model = minilvlm.weights.from_pretrained(folder, dtype=dtype)
        tensors = list(model.parameters())
    load_s = time.perf_counter() - start
    after_load = peak_bytes() - baseline
    with torch.no_grad():
        read_all(tensors)
    total_s = time.perf_counter() - start
    print(json.dumps({"load_s": load_s, "total_s": total_s, "peak_after_load": after_load,
                      "peak_after_read": peak_bytes() - baseline}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
