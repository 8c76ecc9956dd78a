"""DispatchLog: a TorchDispatchMode that records every op that runs under it, with the devices of the
tensors it produced, so that tests can prove two things about code run on meta or fake tensors:

  * no tensor was made on the CPU (a forgotten `device=` in torch.tensor/empty/arange, or a `.cpu()`):
    on meta such a tensor is created silently, on CUDA it costs a host copy or a sync;
  * how often the host read a value (`aten._local_scalar_dense`, what .item(), float() and bool()
    of a tensor run), the host syncs of code that runs on a GPU.

Ops that run inside another op's kernel (a fake kernel's own ATen calls) are not seen: the mode sees
what Python code dispatches, which is the code under test.
"""
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class DispatchLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []     # every op name, in order
        self.produced = []  # (op name, device) for every tensor an op returned

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.calls.append(str(func))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.produced.append((str(func), leaf.device))
        if func is torch.ops.aten._local_scalar_dense.default:
            self.produced.append((str(func), None))
        return out

    def ops_on(self, device_type):
        """The ops that produced a tensor on `device_type`, in order."""
        return [name for name, device in self.produced if device is not None and device.type == device_type]

    def host_reads(self):
        """How many times a tensor's value was read on the host."""
        return sum(1 for name, device in self.produced if device is None)

    def ran(self, name):
        """Whether an op whose name contains `name` ran (e.g. "minilvlm.patch_embed")."""
        return any(name in op for op in self.calls)
