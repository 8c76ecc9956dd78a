"""Dynamic loss scaling for fp16 training, kept on the device: the scale multiplies the loss before
backward, its inverse goes into the fused optimizer step as grad_scale, and a step whose grads hold
an inf or NaN is skipped inside the kernel (found_inf) while the scale halves; after
`growth_interval` good steps in a row it doubles. `update` reads found_inf back once per step."""
import torch


class LossScaler:
    def __init__(self, init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000,
                 device="cpu"):
        self.growth_factor, self.backoff_factor, self.growth_interval = growth_factor, backoff_factor, growth_interval
        self._scale = torch.tensor([init_scale], dtype=torch.float32, device=device)
        self.current = float(init_scale)   # the host's copy: update() knows every change it makes
        self.good_steps = 0
        self.skipped_steps = 0

    def scale(self, loss):
        return loss * self._scale.to(loss.dtype).reshape(())

    def inverse(self):
        """1 / scale as a 1-element float32 tensor (the optimizer's grad_scale)."""
        return self._scale.reciprocal()

    @staticmethod
    def found_inf(norm):
        """A 1-element float32 flag, 1 where the (scaled) grads' norm is not finite."""
        return (~torch.isfinite(norm)).to(torch.float32).reshape(1)

    def update(self, found_inf):
        """Halve the scale after a skipped step, double it after growth_interval good ones; the
        one host read of the step."""
        if bool(found_inf.item()):
            self._rescale(self.backoff_factor)
            self.good_steps = 0
            self.skipped_steps += 1
            return
        self.good_steps += 1
        if self.good_steps == self.growth_interval:
            self._rescale(self.growth_factor)
            self.good_steps = 0

    def _rescale(self, factor):
        self._scale *= factor
        self.current *= factor

    def state_dict(self):
        return {"scale": self.current, "good_steps": self.good_steps, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state):
        self.current = float(state["scale"])
        self._scale.fill_(self.current)
        self.good_steps, self.skipped_steps = int(state["good_steps"]), int(state["skipped_steps"])

    def metrics(self):
        return {"scale": self.current, "skipped_steps": self.skipped_steps}
