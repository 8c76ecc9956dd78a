"""LossScaler: dynamic loss scaling for fp16 training with FusedAdamW and ZeroAdamW.

fp16 keeps 10 mantissa bits and stops at 65504, so small grads underflow to zero unless the loss is
multiplied by a large factor before backward. The scaler keeps that factor, S, as a 1-element
float32 tensor on the loss's device and follows torch.cuda.amp.GradScaler's rule: after a step whose
grads hold an inf or NaN, S halves (backoff_factor) and the step is skipped; after growth_interval
steps in a row without one, S doubles (growth_factor).

    scaler = LossScaler()                        # enabled=False: every method passes through
    scaler.scale(loss).backward()                # loss * S
    grad_norm = scaler.step(optimizer, max_norm=1.0)
    optimizer.last_step_skipped                  # True when the grads overflowed

step() never unscales the grads in memory. It takes the grad norm of the scaled grads (the one
reduction per step that clipping needs anyway; ZeroAdamW's is global over the ranks), calls it an
overflow when that norm is not finite, and hands the optimizer grad_scale = clip / S and
found_inf = the overflow flag: the fused kernel unscales, clips and skips in its single pass. S is
updated with tensor ops on its device, so the scaler itself never syncs; the optimizer reads the
flag once per step (see minilvlm.optim.fused_adamw). state_dict()/load_state_dict() carry S and the
count of good steps for checkpoints (they read S on the host).
"""
import torch


class LossScaler:
    def __init__(self, init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000,
                 enabled=True):
        if not init_scale > 0:
            raise ValueError(f"LossScaler: init_scale must be > 0, got {init_scale}")
        if not growth_factor > 1.0:
            raise ValueError(f"LossScaler: growth_factor must be > 1, got {growth_factor}")
        if not 0.0 < backoff_factor < 1.0:
            raise ValueError(f"LossScaler: backoff_factor must lie in (0, 1), got {backoff_factor}")
        if not (isinstance(growth_interval, int) and growth_interval >= 1):
            raise ValueError(f"LossScaler: growth_interval must be a positive int, got {growth_interval!r}")
        self.enabled = bool(enabled)
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval = growth_interval
        self._initial = (float(init_scale), 0)  # (scale, good steps) until the first scale() picks a device
        self._scale = None                      # float32 [1] on the loss's device
        self._good_steps = None                 # int32 [1] beside it

    def _state_on(self, device):
        """The scale and good-step count on `device`, made from the pending values the first time."""
        if self._scale is None:
            scale, good = self._initial
            self._scale = torch.full((1,), scale, dtype=torch.float32, device=device)
            self._good_steps = torch.full((1,), good, dtype=torch.int32, device=device)
        return self._scale, self._good_steps

    def scale(self, loss):
        """loss * S (loss itself when disabled)."""
        if not self.enabled:
            return loss
        scale, _ = self._state_on(loss.device)
        return loss * scale.to(loss.dtype).reshape(())

    @torch.no_grad()
    def step(self, optimizer, max_norm=None):
        """Unscale (and clip to max_norm) inside the optimizer's fused step, skipping it on inf/NaN grads,
        then update S. Returns the grad norm of the unscaled grads (a tensor, not read on the host;
        inf or NaN on a skipped step)."""
        norm = optimizer.grad_norm()
        if not self.enabled:
            scale = None if max_norm is None else torch.clamp(max_norm / (norm + 1e-6), max=1.0)
            optimizer.step(grad_scale=scale)
            return norm
        loss_scale, _ = self._state_on(norm.device)
        found_inf = (~torch.isfinite(norm)).to(torch.float32).reshape(1)
        inverse = loss_scale.reciprocal()
        norm = norm * inverse.reshape(())
        grad_scale = inverse if max_norm is None else inverse * torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        optimizer.step(grad_scale=grad_scale, found_inf=found_inf)
        self.update(found_inf)
        return norm

    @torch.no_grad()
    def update(self, found_inf):
        """S after one step, on the device: halve it on an overflow (and restart the count of good
        steps), double it after growth_interval good steps (unless that would overflow fp32)."""
        if not self.enabled:
            return
        scale, good = self._state_on(found_inf.device)
        overflow = found_inf.reshape(1).to(scale.device) != 0
        good_after = torch.where(overflow, torch.zeros_like(good), good + 1)
        grown = scale * self.growth_factor
        grow = (good_after >= self.growth_interval) & torch.isfinite(grown)
        scale.copy_(torch.where(overflow, scale * self.backoff_factor, torch.where(grow, grown, scale)))
        good.copy_(torch.where(grow, torch.zeros_like(good_after), good_after))

    def get_scale(self):
        """S as a Python float (a host sync: for logging and checkpoints, not for every step)."""
        if self._scale is None:
            return self._initial[0]
        return float(self._scale.item())

    def state_dict(self):
        good = self._initial[1] if self._good_steps is None else int(self._good_steps.item())
        return {"scale": self.get_scale(), "good_steps": good, "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor, "growth_interval": self.growth_interval,
                "enabled": self.enabled}

    def load_state_dict(self, state):
        missing = {"scale", "good_steps"} - set(state)
        if missing:
            raise KeyError(f"LossScaler.load_state_dict: the state has no {sorted(missing)}")
        self.growth_factor = float(state.get("growth_factor", self.growth_factor))
        self.backoff_factor = float(state.get("backoff_factor", self.backoff_factor))
        self.growth_interval = int(state.get("growth_interval", self.growth_interval))
        self.enabled = bool(state.get("enabled", self.enabled))
        if self._scale is None:
            self._initial = (float(state["scale"]), int(state["good_steps"]))
        else:
            self._scale.fill_(float(state["scale"]))
            self._good_steps.fill_(int(state["good_steps"]))
