"""torch.distributed setup for torchrun: gloo on CPU, NCCL on GPU, with timeouts so that a dead or
failed rank makes every other rank fail within the timeout instead of hanging."""
import datetime
import gc
import os

import torch
import torch._dynamo  # noqa: F401  (imported before any process group exists; see below)
import torch.distributed as dist

# Importing torch._dynamo (torch.optim does it lazily when the first optimizer is built) after
# init_process_group leaves references to the default group that destroy_process_group cannot drop.
# The group then lives into interpreter shutdown, and a gloo worker thread that frees a finished
# collective's tensors there needs the GIL and aborts the process ("terminate called without an
# active exception"). Importing it first keeps the group destroyable: tests/train/test_distributed.py.

DEFAULT_TIMEOUT_S = 30


def init_distributed(device=None, timeout_s=None):
    """Initialise the default process group from torchrun's environment. Returns (rank, world_size);
    (0, 1) without torchrun. The backend follows the device the run computes on: NCCL for CUDA
    tensors (after making cuda:LOCAL_RANK current), gloo otherwise. MINILVLM_DIST_TIMEOUT overrides
    the collective timeout (seconds)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    cuda = device is not None and torch.device(device).type == "cuda"
    timeout_s = timeout_s or float(os.environ.get("MINILVLM_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    if cuda:
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


def shutdown_distributed():
    """Destroy the process group. Free DDP modules and optimizers first: gloo may abort at exit
    when they outlive the group."""
    if dist.is_initialized():
        gc.collect()  # tensors of finished collectives held only by cyclic garbage
        dist.barrier()
        dist.destroy_process_group()


def sum_over_ranks(values, world, device="cpu"):
    """Element-wise sum of a list of numbers over all ranks (float64: exact for token counts). The
    tensor lives on `device`, where the process group's backend wants it (NCCL: the GPU)."""
    if world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()
