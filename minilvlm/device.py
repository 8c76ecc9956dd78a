"""Where a run computes and in what precision: resolving `train.device` / `--device`, the autocast
context of a precision on that device, and what the device can do (peak FLOP/s for MFU, memory).

Devices: "auto" (CUDA when torch sees a GPU, else the CPU), "cpu", "cuda", "cuda:N" and "meta"
(no data at all: the dry run). Under torchrun "cuda" means the rank's own GPU, cuda:LOCAL_RANK.
Precisions: "fp32"; "bf16" (pure bf16: the model's params and activations are bf16, the optimizer
keeps fp32 master weights and moments, and nothing is recast on each forward); "bf16-autocast" and
"fp16-autocast" (matmuls and convolutions in half precision under torch.autocast, weights and the
loss in fp32; fp16 needs dynamic loss scaling)."""
import contextlib
import os
import resource

import torch

PRECISIONS = ("fp32", "bf16", "bf16-autocast", "fp16-autocast")
AUTOCAST_DTYPES = {"bf16-autocast": torch.bfloat16, "fp16-autocast": torch.float16}
# Precisions that store the model itself in a lower dtype (with fp32 masters in the optimizer).
MODEL_DTYPES = {"bf16": torch.bfloat16}

# Dense bf16/fp16 tensor-core peak, TFLOP/s, per GPU (no sparsity), by a substring of the device
# name torch reports. train.peak_tflops overrides it for any other device.
PEAK_TFLOPS = (("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("L4", 121.0), ("RTX 4090", 165.2))


class DeviceError(ValueError):
    """A device that cannot be used here, with what to do instead."""


def parse_device(name):
    """Check the spelling of a device setting; returns it. DeviceError for anything else."""
    if name in ("auto", "cpu", "cuda", "meta"):
        return name
    index = name[5:] if name.startswith("cuda:") else ""
    if index.isdigit():
        return name
    raise DeviceError(f"{name!r} is not a device; expected auto, cpu, cuda, cuda:N or meta")


def resolve_device(name, local_rank=None):
    """The torch.device for a device setting on this machine. local_rank (torchrun's LOCAL_RANK)
    picks the GPU for "cuda" and "auto". DeviceError when a GPU is asked for and there is none."""
    parse_device(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name in ("cpu", "meta"):
        return torch.device(name)
    if not torch.cuda.is_available():
        why = "torch is a CPU-only build" if torch.version.cuda is None else "torch sees no CUDA device"
        raise DeviceError(f"{name!r} was asked for, but {why}; use cpu (or auto)")
    if name == "cuda":
        index = local_rank if local_rank is not None else torch.cuda.current_device()
    else:
        index = int(name[5:])
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"cuda:{index} was asked for, but this machine has {count} CUDA device(s)")
    return torch.device("cuda", index)


def local_rank():
    """torchrun's LOCAL_RANK, or None outside torchrun."""
    value = os.environ.get("LOCAL_RANK")
    return int(value) if value is not None else None


def autocast(device, precision):
    """The autocast context of a precision on a device (a no-op for fp32 and on meta)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    if dtype is None or device.type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def peak_tflops(device, override=0.0):
    """The device's dense half-precision peak in TFLOP/s (override when > 0), or None if unknown."""
    if override > 0:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS if key in name), None)


def memory_metrics(device):
    """Peak memory so far: allocated bytes on a CUDA device, this process's peak RSS on the CPU."""
    if device.type == "cuda":
        return {"mem/peak_allocated_gb": torch.cuda.max_memory_allocated(device) / 2 ** 30}
    return {"mem/peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}
