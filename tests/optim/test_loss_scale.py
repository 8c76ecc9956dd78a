"""LossScaler on its own: the growth and backoff rule, checkpoints, the disabled pass-through, bad
arguments, and the state made on the loss's device."""
import pytest
import torch

from minilvlm.optim import FusedAdamW, LossScaler


def flag(overflow):
    return torch.tensor([1.0 if overflow else 0.0])


def test_backoff_on_overflow_and_growth_after_interval_good_steps():
    scaler = LossScaler(init_scale=1024.0, growth_interval=3)
    scaler.scale(torch.ones(()))
    history = []
    for overflow in (False, False, True, False, False, False, False, True, True):
        scaler.update(flag(overflow))
        history.append(scaler.get_scale())
    # two good steps, an overflow (halve, count restarts), three good (double), one good, two overflows
    assert history == [1024.0, 1024.0, 512.0, 512.0, 512.0, 1024.0, 1024.0, 512.0, 256.0]


def test_scale_never_grows_to_inf_and_nan_grads_count_as_overflow():
    scaler = LossScaler(init_scale=2.0 ** 127, growth_interval=1)
    scaler.scale(torch.ones(()))
    scaler.update(flag(False))
    assert scaler.get_scale() == 2.0 ** 127
    param = torch.nn.Parameter(torch.ones(4))
    opt = FusedAdamW([param])
    param.grad.copy_(torch.tensor([1.0, float("nan"), 0.0, 0.0]))
    norm = scaler.step(opt)
    assert opt.last_step_skipped and torch.isnan(norm) and scaler.get_scale() == 2.0 ** 126
    assert torch.equal(param.detach(), torch.ones(4))


def test_scale_multiplies_the_loss_on_its_device_and_dtype():
    scaler = LossScaler(init_scale=8.0)
    loss = torch.tensor(1.5, dtype=torch.float16)
    scaled = scaler.scale(loss)
    assert scaled.dtype == torch.float16 and scaled.item() == 12.0
    meta = LossScaler().scale(torch.ones((), device="meta"))
    assert meta.device.type == "meta"


def test_state_dict_round_trip_before_and_after_first_use():
    scaler = LossScaler(init_scale=64.0, growth_interval=4)
    scaler.scale(torch.ones(()))
    for overflow in (False, True, False, False):
        scaler.update(flag(overflow))
    state = scaler.state_dict()
    assert state["scale"] == 32.0 and state["good_steps"] == 2 and state["growth_interval"] == 4
    unused = LossScaler()  # loaded before any loss picked its device
    unused.load_state_dict(state)
    used = LossScaler()
    used.scale(torch.ones(()))
    used.load_state_dict(state)
    for resumed in (unused, used):
        assert resumed.state_dict() == state
        resumed.scale(torch.ones(()))
        resumed.update(flag(False))
        resumed.update(flag(False))
        assert resumed.get_scale() == 64.0  # the two good steps it carried, plus two: growth
    with pytest.raises(KeyError, match="good_steps"):
        LossScaler().load_state_dict({"scale": 1.0})


def test_disabled_scaler_passes_everything_through():
    scaler = LossScaler(enabled=False)
    loss = torch.tensor(3.0)
    assert scaler.scale(loss) is loss
    ours, theirs = torch.nn.Parameter(torch.ones(5)), torch.nn.Parameter(torch.ones(5))
    opt, ref = FusedAdamW([ours], lr=0.1), torch.optim.AdamW([theirs], lr=0.1, foreach=False)
    ours.grad.copy_(torch.arange(5.0))
    theirs.grad = torch.arange(5.0)
    norm = scaler.step(opt, max_norm=1.0)
    torch.testing.assert_close(norm, torch.nn.utils.clip_grad_norm_([theirs], 1.0))
    ref.step()
    torch.testing.assert_close(ours.detach(), theirs.detach())
    assert not opt.last_step_skipped


@pytest.mark.parametrize("kwargs,message", [
    (dict(init_scale=0.0), "init_scale must be > 0"),
    (dict(growth_factor=1.0), "growth_factor must be > 1"),
    (dict(backoff_factor=1.0), r"backoff_factor must lie in \(0, 1\)"),
    (dict(growth_interval=0), "growth_interval must be a positive int"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LossScaler(**kwargs)
