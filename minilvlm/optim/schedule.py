"""Learning-rate schedules as multipliers of each param group's base lr, per optimizer step.

  cosine         linear warmup, then a cosine from lr down to min_lr at the last step
  warm_restarts  linear warmup, then torch's CosineAnnealingWarmRestarts (T_0, T_mult, eta_min)
  lavin          LaVIN's per-iteration half-cosine: epochs are fractional (step / steps_per_epoch),
                 linear warmup over warmup_epochs, then a half-cosine to min_lr at the last epoch
  constant       linear warmup, then lr
"""
import math


def lr_at(step, total_steps, base_lr, cfg, steps_per_epoch=1.0):
    """The lr for optimizer step `step` (0-based) of `total_steps`, for a group whose peak is base_lr.
    min_lr is absolute; a group whose base_lr is below it stays at base_lr."""
    floor = min(cfg.min_lr, base_lr)
    if cfg.schedule == "lavin":
        epoch = step / steps_per_epoch
        epochs = total_steps / steps_per_epoch
        if epoch < cfg.warmup_epochs:
            return base_lr * epoch / cfg.warmup_epochs
        span = max(epochs - cfg.warmup_epochs, 1e-12)
        return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / span))
    if step < cfg.warmup_steps:
        return base_lr * (step + 1) / cfg.warmup_steps
    t = step - cfg.warmup_steps
    if cfg.schedule == "constant":
        return base_lr
    if cfg.schedule == "cosine":
        span = max(total_steps - cfg.warmup_steps - 1, 1)
        return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * min(t / span, 1.0)))
    if cfg.schedule == "warm_restarts":
        t, period = restart_cycle(t, cfg.restart_steps, cfg.restart_mult)
        return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * t / period))
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def restart_cycle(t, first, mult):
    """(steps into the current cycle, its length) at step t of warm restarts whose cycles last first,
    first * mult, first * mult**2, ... steps: the cycle arithmetic of CosineAnnealingWarmRestarts in
    closed form, so the cost does not grow with t (a loop over cycles would spin on a length of 0)."""
    if not (isinstance(first, int) and isinstance(mult, int) and first >= 1 and mult >= 1):
        raise ValueError(f"warm restarts need whole restart_steps >= 1 and restart_mult >= 1, got {first} and {mult}")
    if mult == 1:
        return t % first, first
    n = int(math.log(t / first * (mult - 1) + 1, mult))      # completed cycles, maybe off by one from rounding
    start = lambda k: first * (mult ** k - 1) // (mult - 1)  # noqa: E731  (exact: whole numbers)
    while n > 0 and start(n) > t:
        n -= 1
    while start(n + 1) <= t:
        n += 1
    return t - start(n), first * mult ** n
