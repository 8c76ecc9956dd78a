"""torch.distributed setup for torchrun: gloo on CPU, NCCL on GPU, with timeouts so that a dead or
failed rank makes every other rank fail within the timeout instead of hanging.

Two process faults are handled here as well. A worker dies with its launcher (Linux's parent-death
signal): SIGKILL of torchrun leaves no orphan that finishes the run and writes checkpoints. And a rank
whose collective fails (a peer died, or is stopped: SIGSTOP) kills the peers on its own machine before
it exits: a stopped process ignores torchrun's SIGTERM, and torchrun would wait 30 s more before its
SIGKILL, so the whole job now ends within the collective timeout of the fault."""
import ctypes
import datetime
import gc
import os
import signal
import socket
import sys

import torch
import torch._dynamo  # noqa: F401  (imported before any process group exists; see below)
import torch.distributed as dist

# Importing torch._dynamo (torch.optim does it lazily when the first optimizer is built) after
# init_process_group leaves references to the default group that destroy_process_group cannot drop.
# The group then lives into interpreter shutdown, and a gloo worker thread that frees a finished
# collective's tensors there needs the GIL and aborts the process ("terminate called without an
# active exception"). Importing it first keeps the group destroyable: tests/train/test_distributed.py.

DEFAULT_TIMEOUT_S = 30
_PR_SET_PDEATHSIG = 1
_local_peers = []   # pids of the other ranks on this machine, gathered at init


def _die_with_parent():
    """Ask the kernel to SIGKILL this worker when its launcher exits (Linux; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:   # the launcher died before the call: nothing would signal us
        os._exit(1)


def _gather_local_peers():
    here, me = socket.gethostname(), os.getpid()
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, (here, me))
    _local_peers[:] = [pid for host, pid in everyone if host == here and pid != me]


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
    _die_with_parent()
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    _gather_local_peers()
    return dist.get_rank(), dist.get_world_size()


_COLLECTIVE_FAILURES = ("gloo", "nccl", "timed out", "connection closed", "connection reset", "broken pipe")


def is_collective_failure(err):
    """Whether an exception is a collective that failed (a peer died, stopped or timed out): torch's
    DistError, or the RuntimeError that gloo raises with its own message."""
    if isinstance(err, dist.DistError):
        return True
    return isinstance(err, RuntimeError) and any(word in str(err).lower() for word in _COLLECTIVE_FAILURES)


def _kill_local_peers():
    """SIGKILL the other ranks on this machine: the job is lost, and a stopped one would outlive it."""
    for pid in _local_peers:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def shutdown_distributed():
    """Destroy the process group. Free DDP modules and optimizers first: gloo may abort at exit
    when they outlive the group. Called while an exception propagates (from a `finally`), it skips
    the closing barrier (a failed peer would make it wait out the timeout once more), and after a
    failed collective it kills the local peers (see the module's docstring)."""
    if not dist.is_initialized():
        return
    failure = sys.exc_info()[1]
    if is_collective_failure(failure):
        _kill_local_peers()
    gc.collect()  # tensors of finished collectives held only by cyclic garbage
    if failure is None:
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
