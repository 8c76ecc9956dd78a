"""FusedAdamW against torch.optim.AdamW: parity, master weights, grads as flat views, checkpoints."""
import copy
import io
import warnings

import pytest
import torch

import minilvlm.optim.fused_adamw as fused_adamw_module
from minilvlm.optim import FusedAdamW
from tests.conftest import adamw_mismatch, max_rel_diff

SHAPES = [(37,), (64, 17), (5,), (3, 7, 11), (1000,), (1,)]


def make_params(dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(device=device, dtype=dtype)) for s in SHAPES]


def three_groups(params):
    return [{"params": params[:2], "lr": 1e-2, "weight_decay": 0.1},
            {"params": params[2:4], "weight_decay": 0.0},
            {"params": params[4:], "lr": 3e-3}]


def random_grads(params, step, dtype=None):
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(p.shape, generator=g).to(device=p.device, dtype=dtype or p.dtype) for p in params]


def run_parity(steps=100, device="cpu"):
    ours, theirs, exact = make_params(device=device), make_params(device=device), make_params(torch.float64, device=device)
    opt = FusedAdamW(three_groups(ours), lr=1e-3)
    ref = torch.optim.AdamW(three_groups(theirs), lr=1e-3, foreach=False)
    ref64 = torch.optim.AdamW(three_groups(exact), lr=1e-3, foreach=False)
    for step in range(steps):
        for p, q, e, g in zip(ours, theirs, exact, random_grads(ours, step)):
            p.grad.copy_(g)
            q.grad = g.clone()
            e.grad = g.double()
        opt.step()
        ref.step()
        ref64.step()
    return max(adamw_mismatch(p, q, e) for p, q, e in zip(ours, theirs, exact))


def test_fp32_parity_100_steps_three_groups():
    assert run_parity() <= 1e-6


def test_fp32_parity_on_emulated_cuda_kernel(emu, monkeypatch):
    monkeypatch.setattr(fused_adamw_module, "fused_adamw_", emu.fused_adamw_)
    assert run_parity() <= 1e-6


def run_master_parity(dtype=torch.bfloat16, device="cpu"):
    """100 steps of bf16 or fp16 params with fp32 masters against torch.optim.AdamW on fp32 copies; each
    param must stay its master rounded to nearest. Returns the masters' worst mismatch."""
    ours = make_params(dtype, device=device)
    masters = [torch.nn.Parameter(p.detach().float()) for p in ours]
    exact = [torch.nn.Parameter(p.detach().double()) for p in ours]
    opt = FusedAdamW(three_groups(ours), lr=1e-3, master_weights=True)
    ref = torch.optim.AdamW(three_groups(masters), lr=1e-3, foreach=False)
    ref64 = torch.optim.AdamW(three_groups(exact), lr=1e-3, foreach=False)
    for step in range(100):
        for p, q, e, g in zip(ours, masters, exact, random_grads(ours, step)):
            p.grad.copy_(g)
            q.grad = g.float()
            e.grad = g.double()
        opt.step()
        ref.step()
        ref64.step()
    flat = opt._flats[0]
    worst = 0.0
    for i, (p, q, e) in enumerate(zip(flat.params, masters, exact)):
        master = flat.view(flat.master, i)
        worst = max(worst, adamw_mismatch(master, q, e))
        assert torch.equal(p.detach(), master.to(dtype)), "the param is not its master rounded to nearest"
    return worst


def test_master_weight_parity_bf16():
    assert run_master_parity() <= 1e-6


def test_master_weight_parity_on_emulated_cuda_kernel(emu, monkeypatch):
    monkeypatch.setattr(fused_adamw_module, "fused_adamw_", emu.fused_adamw_)
    assert run_master_parity() <= 1e-6


def test_grads_are_views_of_the_flat_buffer_through_backward():
    model = torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.GELU(), torch.nn.Linear(13, 3))
    opt = FusedAdamW(model.parameters())
    flat = opt._flats[0]
    x = torch.randn(5, 7)
    for _ in range(2):
        opt.zero_grad()
        model(x).square().sum().backward()
    for i, p in enumerate(flat.params):
        assert p.grad is flat.grad_views[i]
        assert p.grad.data_ptr() == flat.view(flat.grad, i).data_ptr()
        assert p.data_ptr() == flat.view(flat.param, i).data_ptr()
    reference = copy.deepcopy(model)
    reference.zero_grad()
    reference(x).square().sum().backward()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_module_zero_grad_set_to_none_is_recovered_with_a_warning():
    ours, theirs = make_params(), make_params()
    opt = FusedAdamW(ours, lr=1e-2)
    ref = torch.optim.AdamW(theirs, lr=1e-2, foreach=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(3):
            for p, q, g in zip(ours, theirs, random_grads(ours, step)):
                p.grad = g.clone()  # what autograd does after model.zero_grad(set_to_none=True)
                q.grad = g.clone()
            opt.step()
            ref.step()
    assert sum("replaced outside the optimizer" in str(w.message) for w in caught) == 1
    assert max(max_rel_diff(p, q) for p, q in zip(ours, theirs)) <= 1e-6
    assert ours[0].grad is opt._flats[0].grad_views[0]


@pytest.mark.filterwarnings("ignore:grads were replaced outside the optimizer")
def test_param_with_no_grad_is_skipped_like_torch():
    ours, theirs, exact = make_params(), make_params(), make_params(torch.float64)
    opt = FusedAdamW(three_groups(ours), lr=1e-3)
    ref = torch.optim.AdamW(three_groups(theirs), lr=1e-3, foreach=False)
    ref64 = torch.optim.AdamW(three_groups(exact), lr=1e-3, foreach=False)
    for step in range(6):
        grads = random_grads(ours, step)
        for i, (p, q, e, g) in enumerate(zip(ours, theirs, exact, grads)):
            skip = (i == 1 and step in (1, 2)) or (i == 4 and step == 3)
            p.grad = None if skip else g.clone()
            q.grad = None if skip else g.clone()
            e.grad = None if skip else g.double()
        opt.step()
        ref.step()
        ref64.step()
    assert max(adamw_mismatch(p, q, e) for p, q, e in zip(ours, theirs, exact)) <= 1e-6


def test_grad_scale_and_clipping_match_torch():
    ours, theirs = make_params(), make_params()
    opt = FusedAdamW(ours, lr=1e-2)
    ref = torch.optim.AdamW(theirs, lr=1e-2, foreach=False)
    for step in range(5):
        for p, q, g in zip(ours, theirs, random_grads(ours, step)):
            p.grad.copy_(g * 3)
            q.grad = g * 3
        norm, scale = opt.clip_scale(max_norm=1.0)
        ref_norm = torch.nn.utils.clip_grad_norm_(theirs, max_norm=1.0)
        torch.testing.assert_close(norm, ref_norm, rtol=1e-5, atol=0)
        opt.step(grad_scale=scale)
        ref.step()
    assert max(max_rel_diff(p, q) for p, q in zip(ours, theirs)) <= 1e-5
    with pytest.raises(ValueError, match="one element"):
        opt.step(grad_scale=torch.ones(2))


def test_state_dict_round_trip_continues_exactly():
    params = make_params()
    opt = FusedAdamW(three_groups(params), lr=1e-3)
    for step in range(5):
        for p, g in zip(params, random_grads(params, step)):
            p.grad.copy_(g)
        opt.step()
    buffer = io.BytesIO()
    torch.save({"model": [p.detach().clone() for p in params], "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_params = [torch.nn.Parameter(t) for t in saved["model"]]
    resumed = FusedAdamW(three_groups(resumed_params), lr=0.5)  # lr comes back from the state_dict
    resumed.load_state_dict(saved["opt"])
    assert resumed.param_groups[0]["lr"] == 1e-2 and resumed.param_groups[1]["lr"] == 1e-3
    for step in range(5, 10):
        grads = random_grads(params, step)
        for p, q, g in zip(params, resumed_params, grads):
            p.grad.copy_(g)
            q.grad.copy_(g)
        opt.step()
        resumed.step()
    for p, q in zip(params, resumed_params):
        assert torch.equal(p, q)


def test_loads_a_torch_adamw_state_dict():
    ours, theirs = make_params(), make_params()
    ref = torch.optim.AdamW(three_groups(theirs), lr=1e-3, foreach=False)
    for step in range(3):
        for q, g in zip(theirs, random_grads(theirs, step)):
            q.grad = g
        ref.step()
    with torch.no_grad():
        for p, q in zip(ours, theirs):
            p.copy_(q)
    opt = FusedAdamW(three_groups(ours), lr=1e-3)
    opt.load_state_dict(ref.state_dict())
    for step in range(3, 6):
        for p, q, g in zip(ours, theirs, random_grads(ours, step)):
            p.grad.copy_(g)
            q.grad = g.clone()
        opt.step()
        ref.step()
    assert max(max_rel_diff(p, q) for p, q in zip(ours, theirs)) <= 1e-6


@pytest.mark.filterwarnings("ignore:grads were replaced outside the optimizer")
def test_add_param_group_keeps_existing_state():
    first, second = make_params()[:3], make_params(seed=1)[3:]
    ref_first, ref_second = make_params()[:3], make_params(seed=1)[3:]
    opt = FusedAdamW(first, lr=1e-2)
    ref = torch.optim.AdamW(ref_first, lr=1e-2, foreach=False)
    for step in range(4):
        if step == 2:
            opt.add_param_group({"params": second, "lr": 5e-3})
            ref.add_param_group({"params": ref_second, "lr": 5e-3})
        live = first + (second if step >= 2 else [])
        ref_live = ref_first + (ref_second if step >= 2 else [])
        for p, q, g in zip(live, ref_live, random_grads(live, step)):
            p.grad = g.clone()
            q.grad = g.clone()
        opt.step()
        ref.step()
    assert max(max_rel_diff(p, q) for p, q in zip(first + second, ref_first + ref_second)) <= 1e-6


def test_moved_params_raise_instead_of_training_a_stale_copy():
    params = make_params()
    opt = FusedAdamW(params)
    params[2].data = params[2].data.clone()
    with pytest.raises(RuntimeError, match="no longer live in the optimizer's flat buffer"):
        opt.step()


@pytest.mark.parametrize("kwargs,message", [
    (dict(lr=-1.0), "invalid learning rate"),
    (dict(betas=(0.9, 1.0)), "invalid betas"),
    (dict(eps=-1e-8), "invalid eps"),
    (dict(weight_decay=-0.1), "invalid weight_decay"),
])
def test_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FusedAdamW(make_params(), **kwargs)


def test_frozen_params_are_left_alone():
    params = make_params()
    params[0].requires_grad_(False)
    before = params[0].detach().clone()
    opt = FusedAdamW(params)
    for p in params[1:]:
        p.grad.fill_(1.0)
    opt.step()
    assert torch.equal(params[0], before)
    assert all(p.requires_grad for p in opt._flats[0].params)


@pytest.mark.parametrize("native_check", [True, False])
def test_moved_grad_storage_is_detected(native_check, monkeypatch):
    """A grad whose storage was swapped (`p.grad.data = ...`) is copied back into the flat buffer,
    with the native per-step check and with its Python fallback."""
    import minilvlm.optim.flat as flat_module
    if not native_check:
        monkeypatch.setattr(flat_module, "flat_views_intact", None)
    ours, theirs = make_params(), make_params()
    opt = FusedAdamW(ours, lr=1e-2)
    ref = torch.optim.AdamW(theirs, lr=1e-2, foreach=False)
    assert opt._flats[0].first_moved() == -1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step in range(3):
            for p, q, g in zip(ours, theirs, random_grads(ours, step)):
                q.grad = g.clone()
                if step == 1:
                    p.grad.data = g.clone()
                else:
                    p.grad.copy_(g)
            opt.step()
            ref.step()
    assert max(max_rel_diff(p, q) for p, q in zip(ours, theirs)) <= 1e-6
    assert opt._flats[0].first_moved() == -1
