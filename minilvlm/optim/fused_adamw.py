"""FusedAdamW: torch.optim.AdamW's update over flat buffers, one kernel launch per buffer.

Params of one (device, dtype) live in one flat buffer (minilvlm.optim.flat); `param.data` and
`param.grad` are views into it. The moments are flat float32 buffers of the same layout, and
with master_weights=True bf16/fp16 params get flat float32 master weights. lr, weight decay
and step travel to the kernel per segment (a run of params sharing them), so param groups
with different hyperparameters still take one launch.

Grads: zero_grad() sets them to None as torch's does, and backward's fresh grads are copied into
the flat grad buffer as they arrive (minilvlm/optim/flat.py); zero_grad(set_to_none=False) zeros the
buffer in place instead. A param without a grad at the step is skipped, as torch.optim.AdamW does.

Skipping a step (fp16 loss scaling, minilvlm.optim.loss_scale): step(found_inf=flag) hands a
1-element device tensor to the kernels, which leave params, masters and moments untouched when it
is non-zero; the flag comes from one reduction the caller makes anyway (a non-finite grad_norm()).
The step counts live on the host (they set each segment's bias correction), so after every launch
of the step the flag is read once, one host sync per step as torch's GradScaler makes, never one per
param or buffer, and a skipped step puts the counts back. last_step_skipped and skipped_steps say
what happened. On meta tensors the flag cannot be read and the step counts as taken.
"""
import torch

from minilvlm.ops.fused_adamw import fused_adamw_
from minilvlm.optim.adamw_common import (call_closure, check_adamw_hyperparams, grad_scale_tensor,
                                        read_skip_flag, saved_state_by_param)
from minilvlm.optim.flat import FlatParams
from minilvlm.optim.tensor_list_adamw import TensorListAdamW

_MOMENT_KEYS = ("exp_avg", "exp_avg_sq")


class FusedAdamW(torch.optim.Optimizer):
    """flat=False gives a TensorListAdamW instead (minilvlm/optim/tensor_list_adamw.py): the same
    update over the params' own tensors, for params whose storage FSDP2 owns."""
    flat = True

    def __new__(cls, params=None, *args, flat=True, **kwargs):
        if not flat and cls is FusedAdamW:
            return TensorListAdamW(params, *args, **kwargs)
        return super().__new__(cls)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, master_weights=False,
                 flat=True):
        check_adamw_hyperparams(lr, betas, eps, weight_decay)
        self.master_weights = bool(master_weights)
        self._flats = []
        self._built = False
        self.last_step_skipped = False
        self.skipped_steps = 0
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self._build()

    # ---- layout -------------------------------------------------------------------------

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_adamw_hyperparams(group["lr"], group["betas"], group["eps"], group["weight_decay"])
        if self._built:
            self._build()

    def _build(self):
        """Lay out every trainable param in flat buffers, keeping any state already held."""
        old = self._export_state() if self._built else {}
        for flat in self._flats:  # detach old views so that no two buffers claim a param
            flat.release()
            for p in flat.params:
                p.data = p.data.clone()
                p.grad = None if p.grad is None else p.grad.clone()
        self._flats = []
        for (device, dtype), members in self._trainable_by_buffer(
                (torch.float32, torch.bfloat16, torch.float16, torch.float64)).items():
            flat = FlatParams([p for p, _ in members], [gi for _, gi in members])
            state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
            flat.exp_avg = torch.zeros(flat.numel, dtype=state_dtype, device=device)
            flat.exp_avg_sq = torch.zeros(flat.numel, dtype=state_dtype, device=device)
            flat.master = None
            if self.master_weights and dtype in (torch.bfloat16, torch.float16):
                flat.master = flat.param.to(torch.float32)
            self._flats.append(flat)
        self._built = True
        self._import_state(old)
        self._cached_runs = [None] * len(self._flats)

    def _trainable_by_buffer(self, dtypes):
        """{(device, dtype): [(param, group index), ...]} over the params that require grad (frozen
        ones are never updated, as in torch.optim.AdamW), in param-group order. Also records every
        param's index in that order (torch's state_dict numbering) in self._param_index."""
        by_key, self._param_index = {}, {}
        for gi, group in enumerate(self.param_groups):
            for p in group["params"]:
                self._param_index[p] = len(self._param_index)
                if not p.requires_grad:
                    continue
                if p.dtype not in dtypes:
                    raise TypeError(f"{type(self).__name__}: params of dtype {p.dtype} are not supported")
                by_key.setdefault((p.device, p.dtype), []).append((p, gi))
        return by_key

    def _export_state(self):
        """{param: {step, exp_avg, exp_avg_sq[, master]}} as views of the flat buffers."""
        out = {}
        for flat in self._flats:
            for i, p in enumerate(flat.params):
                entry = {"step": torch.tensor(float(flat.steps[i])),
                         "exp_avg": flat.view(flat.exp_avg, i), "exp_avg_sq": flat.view(flat.exp_avg_sq, i)}
                if flat.master is not None:
                    entry["master"] = flat.view(flat.master, i)
                out[p] = entry
        return out

    def _import_state(self, state):
        with torch.no_grad():
            for flat in self._flats:
                for i, p in enumerate(flat.params):
                    entry = state.get(p)
                    if not entry:
                        continue
                    for key in _MOMENT_KEYS:
                        src = entry[key]
                        if src.shape != p.shape:
                            raise ValueError(f"optimizer state '{key}' of shape {tuple(src.shape)} does not fit "
                                             f"param of shape {tuple(p.shape)}")
                        flat.view(getattr(flat, key), i).copy_(src)
                    flat.steps[i] = int(entry["step"])
                    if flat.master is not None:
                        if "master" in entry:
                            flat.view(flat.master, i).copy_(entry["master"])
                            p.data.copy_(flat.view(flat.master, i))
                        else:
                            flat.view(flat.master, i).copy_(p.detach())

    # ---- step ---------------------------------------------------------------------------

    def zero_grad(self, set_to_none=True):
        """Grads to None (the default: backward then copies each fresh grad into its slot), or, with
        set_to_none=False, the flat grad buffers zeroed in place with the grads still views of them."""
        for flat in self._flats:
            flat.zero_grad(set_to_none)

    @torch.no_grad()
    def grad_norm(self):
        """The global L2 norm of all grads (a float32 tensor on the params' device), from one reduction
        per flat buffer; nothing is read on the host. Non-finite when some grad is inf or NaN."""
        for flat in self._flats:
            flat.collect_grads()
        norms = [torch.linalg.vector_norm(f.grad, dtype=torch.float32) for f in self._flats]
        if not norms:
            return torch.zeros(())
        # on the grads' device: no host read inside the step, and a meta-device dry run has no data to copy
        device = norms[0].device
        return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]))

    @torch.no_grad()
    def clip_scale(self, max_norm):
        """(grad norm, the grad_scale for step()) that clips the global norm to max_norm, like
        torch.nn.utils.clip_grad_norm_."""
        norm = self.grad_norm()
        return norm, torch.clamp(max_norm / (norm + 1e-6), max=1.0)

    @torch.no_grad()
    def step(self, closure=None, grad_scale=None, found_inf=None):
        """One AdamW step. grad_scale (float or 1-element tensor) multiplies every grad inside the
        kernel: pass 1/loss_scale to unscale, or the clip_scale() factor to clip. found_inf (a
        1-element tensor, non-zero: inf/NaN grads) skips the step (see the module docstring)."""
        loss = call_closure(closure)
        counts = self._step_counts() if found_inf is not None else None
        for k, flat in enumerate(self._flats):
            active = flat.collect_grads()
            if active is None and self._cached_runs[k] is not None:
                runs = self._cached_runs[k]
                for run in runs:
                    run[3] += 1
                for i in range(len(flat.steps)):
                    flat.steps[i] += 1
            else:
                for i in range(len(flat.steps)):
                    if active is None or active[i]:
                        flat.steps[i] += 1
                runs = flat.runs(active)
                self._cached_runs[k] = runs if active is None else None
            self._apply(flat, runs, grad_scale_tensor(grad_scale, flat.device),
                        grad_scale_tensor(found_inf, flat.device, "found_inf"))
        self._end_step(read_skip_flag(found_inf), counts)
        return loss

    def _step_counts(self):
        """A copy of the per-param step counts and cached segment runs (restored by a skipped step)."""
        return ([list(flat.steps) for flat in self._flats],
                [None if runs is None else [list(run) for run in runs] for runs in self._cached_runs])

    def _end_step(self, skipped, counts):
        """Record whether the step was skipped; if it was, put back the step counts it advanced."""
        self.last_step_skipped = skipped
        if skipped:
            self.skipped_steps += 1
            steps, runs = counts
            for flat, saved in zip(self._flats, steps):
                flat.steps = saved
            self._cached_runs = runs

    def _apply(self, flat, runs, scale, found_inf=None, param=None, grad=None):
        """One fused_adamw_ call per distinct (betas, eps) among the groups (usually one). param and
        grad default to the whole flat buffers (ZeroAdamW passes its slices)."""
        param = flat.param if param is None else param
        grad = flat.grad if grad is None else grad
        by_constants = {}
        for begin, end, gi, step in runs:
            group = self.param_groups[gi]
            by_constants.setdefault((group["betas"][0], group["betas"][1], group["eps"]), []).append(
                (begin, end, group["lr"], group["weight_decay"], step))
        for (beta1, beta2, eps), segs in by_constants.items():
            bounds = [x for s in segs for x in s[:2]]
            fused_adamw_(param, grad, flat.exp_avg, flat.exp_avg_sq, flat.master, bounds,
                         [s[2] for s in segs], [s[3] for s in segs], [s[4] for s in segs], beta1, beta2, eps, scale,
                         found_inf)

    # ---- checkpoints --------------------------------------------------------------------

    def state_dict(self):
        """torch.optim.AdamW's layout (per-param step, exp_avg, exp_avg_sq, plus master when kept);
        tensors are views of the live flat buffers, as torch's own state_dict returns live state."""
        self.state.clear()
        self.state.update(self._export_state())
        return super().state_dict()

    def load_state_dict(self, state_dict):
        """Load a state_dict of FusedAdamW or torch.optim.AdamW with the same param groups."""
        by_param = saved_state_by_param(self.param_groups, state_dict)
        for flat in self._flats:
            flat.steps = [0] * len(flat.params)
            flat.exp_avg.zero_()
            flat.exp_avg_sq.zero_()
        self._import_state(by_param)
        self._cached_runs = [None] * len(self._flats)
        self.state.clear()
