"""TensorListAdamW (FusedAdamW(..., flat=False)): torch.optim.AdamW's update over the params' own
tensors, through the multi-tensor kernel (minilvlm.ops.fused_adamw_multi_): one launch per chunk of
tensors on CUDA, one parallel pass on the CPU, per (device, dtype, betas, eps).

It exists for params whose storage the optimizer cannot take over: FSDP2's sharded params are
DTensors that FSDP owns, so the flat buffers of FusedAdamW are not an option. A DTensor param is
updated through its local shard, its state is held as DTensors of the same placement (so
torch.distributed.checkpoint saves and reshards it like any torch optimizer's), and grad_norm()
sums the shards' squares across the mesh. The state layout is torch.optim.AdamW's (step on the
host, exp_avg, exp_avg_sq, plus master beside bf16/fp16 params with master_weights), made when the
optimizer is built, so checkpoint loading finds it in place.

found_inf skips the step inside the kernel, as in FusedAdamW; the flag is read once after the
launches to decide whether the step counts advance.
"""
import torch

from minilvlm.ops.fused_adamw import fused_adamw_multi_
from minilvlm.optim.adamw_common import (call_closure, check_adamw_hyperparams, grad_scale_tensor,
                                        read_skip_flag, saved_state_by_param)

_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_LIST_KEYS = ("params", "grads", "exp_avgs", "exp_avg_sqs", "masters", "lrs", "weight_decays", "steps")


def _local(tensor):
    """The local shard of a DTensor, the tensor itself otherwise."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _is_sharded(tensor):
    return any(placement.is_shard() for placement in getattr(tensor, "placements", ()))


class TensorListAdamW(torch.optim.Optimizer):
    flat = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, master_weights=False):
        check_adamw_hyperparams(lr, betas, eps, weight_decay)
        self.master_weights = bool(master_weights)
        self.last_step_skipped = False
        self.skipped_steps = 0
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _init_state(self, p):
        if p.dtype not in _DTYPES:
            raise TypeError(f"{type(self).__name__}: params of dtype {p.dtype} are not supported")
        state_dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
        with torch.no_grad():
            state = {"step": torch.tensor(0.0),
                     "exp_avg": torch.zeros_like(p, dtype=state_dtype, memory_format=torch.contiguous_format),
                     "exp_avg_sq": torch.zeros_like(p, dtype=state_dtype, memory_format=torch.contiguous_format)}
            if self.master_weights and p.dtype in (torch.bfloat16, torch.float16):
                state["master"] = p.detach().to(torch.float32, copy=True)
        self.state[p] = state

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_adamw_hyperparams(group["lr"], group["betas"], group["eps"], group["weight_decay"])
        for p in group["params"]:
            if p.requires_grad:
                self._init_state(p)

    def _stepping(self):
        """(group, param) for every trainable param that has a grad this step."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad and p.grad is not None:
                    yield group, p

    @torch.no_grad()
    def grad_norm(self):
        """The global L2 norm of all grads (float32, on the params' device): local squares summed, the
        sharded ones across their mesh (one all-reduce); nothing is read on the host."""
        sharded, whole, group = [], [], None
        for _, p in self._stepping():
            square = torch.linalg.vector_norm(_local(p.grad), dtype=torch.float32).square()
            if _is_sharded(p.grad):
                sharded.append(square)
                group = p.grad.device_mesh.get_group()
            else:
                whole.append(square)
        device = (sharded or whole)[0].device if (sharded or whole) else torch.device("cpu")
        total = torch.zeros((), dtype=torch.float32, device=device)
        if sharded:
            total = torch.stack(sharded).sum()
            torch.distributed.all_reduce(total, group=group)
        if whole:
            total = total + torch.stack(whole).sum()
        return total.sqrt()

    @torch.no_grad()
    def clip_scale(self, max_norm):
        """(grad norm, the grad_scale for step()) that clips the global norm to max_norm."""
        norm = self.grad_norm()
        return norm, torch.clamp(max_norm / (norm + 1e-6), max=1.0)

    def _lists(self):
        """{(device, dtype, beta1, beta2, eps): the kernel's argument lists} over this step's params."""
        batches = {}
        for group, p in self._stepping():
            state, param = self.state[p], _local(p)
            if param.numel() == 0:  # an empty shard (uneven FSDP2 sharding) has nothing to update
                continue
            key = (param.device, param.dtype, *group["betas"], group["eps"])
            lists = batches.setdefault(key, {name: [] for name in _LIST_KEYS})
            lists["params"].append(param)
            lists["grads"].append(_local(p.grad).to(param.dtype))
            lists["exp_avgs"].append(_local(state["exp_avg"]))
            lists["exp_avg_sqs"].append(_local(state["exp_avg_sq"]))
            if "master" in state:
                lists["masters"].append(_local(state["master"]))
            lists["lrs"].append(group["lr"])
            lists["weight_decays"].append(group["weight_decay"])
            lists["steps"].append(int(state["step"]) + 1)
        return batches

    @torch.no_grad()
    def step(self, closure=None, grad_scale=None, found_inf=None):
        """One AdamW step; grad_scale and found_inf as in FusedAdamW.step."""
        loss = call_closure(closure)
        for (device, dtype, beta1, beta2, eps), lists in self._lists().items():
            masters = lists.pop("masters")
            if masters and len(masters) != len(lists["params"]):
                raise RuntimeError(f"{type(self).__name__}: some {dtype} params have master weights and some not")
            fused_adamw_multi_(lists["params"], lists["grads"], lists["exp_avgs"], lists["exp_avg_sqs"], masters,
                               lists["lrs"], lists["weight_decays"], lists["steps"], beta1, beta2, eps,
                               grad_scale_tensor(grad_scale, device),
                               grad_scale_tensor(found_inf, device, "found_inf"))
        self.last_step_skipped = read_skip_flag(found_inf)
        if self.last_step_skipped:
            self.skipped_steps += 1
        else:
            for _, p in self._stepping():
                self.state[p]["step"] += 1
        return loss

    def load_state_dict(self, state_dict):
        """Load a state_dict of this optimizer or torch.optim.AdamW with the same param groups, into the
        state tensors in place (DTensors stay DTensors; moments keep their float32)."""
        for p, entry in saved_state_by_param(self.param_groups, state_dict).items():
            if p not in self.state:
                continue
            state = self.state[p]
            with torch.no_grad():
                for key in ("exp_avg", "exp_avg_sq"):
                    if entry[key].shape != state[key].shape:
                        raise ValueError(f"optimizer state '{key}' of shape {tuple(entry[key].shape)} does not "
                                         f"fit param of shape {tuple(p.shape)}")
                    state[key].copy_(entry[key])
                state["step"].fill_(float(entry["step"]))
                if "master" in state:
                    state["master"].copy_(entry["master"] if "master" in entry else p.detach())
                    p.copy_(state["master"])
