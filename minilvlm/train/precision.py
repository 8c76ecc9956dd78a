"""train.precision in the step: the autocast context, and for fp16 the dynamic loss scale around
backward and the optimizer step.

fp16-autocast: the objective is multiplied by the loss scale before backward; the optimizer step
unscales inside its fused kernel (grad_scale = clip factor / loss scale) and is skipped there when
the grads hold an inf or NaN (found_inf, from the grad-norm reduction the step computes anyway), and
the scale halves; after `growth_interval` good steps it doubles. The step reads found_inf back once
(minilvlm.optim.LossScaler), as torch's GradScaler does; nothing syncs per parameter."""
from minilvlm.device import autocast
from minilvlm.optim import LossScaler


class StepPrecision:
    """autocast=False when FSDP's mixed-precision policy already computes in the half type."""

    def __init__(self, precision, device, scaler_state=None, autocast=True):
        self.precision, self.device, self.use_autocast = precision, device, autocast
        self.skipped_steps = 0  # steps the optimizer skipped on inf/NaN grads (fp16)
        self.scaler = LossScaler() if precision == "fp16-autocast" else None
        if self.scaler is not None and scaler_state:
            self.scaler.load_state_dict(scaler_state)

    def autocast(self):
        return autocast(self.device, self.precision if self.use_autocast else "fp32")

    def backward(self, objective):
        (objective if self.scaler is None else self.scaler.scale(objective)).backward()

    def step(self, optimizer, clip):
        """Clip, unscale and step; returns the (unscaled) global grad norm as a device tensor."""
        if self.scaler is None:
            norm, scale = optimizer.clip_scale(clip) if clip > 0 else (optimizer.grad_norm(), None)
            optimizer.step(grad_scale=scale)
            return norm
        norm = self.scaler.step(optimizer, max_norm=clip if clip > 0 else None)
        self.skipped_steps = optimizer.skipped_steps
        return norm

    def state_dict(self):
        """What a checkpoint keeps of it (the loss scale and its counters), as state.json entries."""
        return {} if self.scaler is None else {"loss_scaler": self.scaler.state_dict()}

    def metrics(self):
        """Read on the host once per logged step."""
        if self.scaler is None:
            return {}
        return {"loss_scaler/scale": self.scaler.get_scale(), "loss_scaler/skipped_steps": self.skipped_steps}
