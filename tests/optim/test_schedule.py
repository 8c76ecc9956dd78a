"""Learning-rate schedules against their definitions (and torch's warm restarts)."""
import math

import pytest
import torch

from minilvlm.config import OptimSection
from minilvlm.optim.schedule import lr_at, restart_cycle


def test_cosine_warmup_then_decay_to_min():
    cfg = OptimSection(schedule="cosine", warmup_steps=10, min_lr=1e-5)
    lrs = [lr_at(s, 100, 1e-3, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[10] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-5)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_warm_restarts_match_torch():
    cfg = OptimSection(schedule="warm_restarts", warmup_steps=0, restart_steps=7, restart_mult=2, min_lr=2e-6)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=2e-5)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=7, T_mult=2, eta_min=2e-6)
    for step in range(40):
        assert lr_at(step, 40, 2e-5, cfg) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        opt.step()
        sched.step()


def restart_cycle_by_steps(t, first, mult):
    period = first
    while t >= period:
        t -= period
        period *= mult
    return t, period


def test_restart_cycles_in_closed_form_never_spin():
    """Issue 17 K1: a cycle length of 0 (restart_steps=0, or restart_mult=0 at the second cycle) is an
    error, not an endless loop, and a far step costs no more than a near one."""
    for first, mult in ((1, 1), (3, 1), (1, 2), (7, 2), (5, 3), (2, 10)):
        assert all(restart_cycle(t, first, mult) == restart_cycle_by_steps(t, first, mult) for t in range(3000))
    assert restart_cycle(10 ** 15, 1, 1) == (0, 1)
    assert restart_cycle(10 ** 15, 7, 2) == restart_cycle_by_steps(10 ** 15, 7, 2)
    for first, mult in ((0, 2), (7, 0), (-1, 2), (1.5, 2)):
        with pytest.raises(ValueError, match="warm restarts need"):
            lr_at(100, 200, 1e-3, OptimSection(schedule="warm_restarts", warmup_steps=0, restart_steps=first,
                                               restart_mult=mult))


def test_lavin_half_cosine_over_fractional_epochs():
    cfg = OptimSection(schedule="lavin", warmup_epochs=2, min_lr=0.0)
    per_epoch = 10
    assert lr_at(5, 200, 1.0, cfg, per_epoch) == pytest.approx(0.25)      # epoch 0.5 of 2 warmup epochs
    assert lr_at(20, 200, 1.0, cfg, per_epoch) == pytest.approx(1.0)
    mid = 20 + 90                                                         # halfway through epochs 2..20
    assert lr_at(mid, 200, 1.0, cfg, per_epoch) == pytest.approx(0.5)
    assert lr_at(155, 200, 1.0, cfg, per_epoch) == pytest.approx(0.5 * (1 + math.cos(math.pi * 13.5 / 18)))


def test_min_lr_never_raises_a_small_group():
    cfg = OptimSection(schedule="cosine", warmup_steps=0, min_lr=1e-3)
    assert lr_at(99, 100, 1e-4, cfg) == pytest.approx(1e-4)
