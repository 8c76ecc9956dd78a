"""FusedAdamW(flat=False), the tensor-list AdamW that FSDP runs use: torch.optim.AdamW's update over
the params' own tensors, with param groups, master weights, the fp16 skip, checkpoints in torch's
layout, and the meta device. FSDP2's local shards are exercised by tests/train/test_fsdp.py."""
import pytest
import torch

from minilvlm.optim import FusedAdamW
from minilvlm.optim.tensor_list_adamw import TensorListAdamW

SHAPES = [(7, 5), (1,), (300,), (3, 3, 3), (1000,)]


def make_params(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in SHAPES]


def groups_of(params):
    return [{"params": params[:2], "lr": 3e-3, "weight_decay": 0.1},
            {"params": params[2:], "lr": 1e-3, "weight_decay": 0.0}]


def set_grads(params, step):
    g = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)


def test_flat_false_gives_the_tensor_list_optimizer_and_keeps_the_params_storage():
    params = make_params()
    pointers = [p.data_ptr() for p in params]
    opt = FusedAdamW(params, flat=False)
    assert isinstance(opt, TensorListAdamW) and opt.flat is False
    assert [p.data_ptr() for p in params] == pointers   # no flat buffer took them over


def test_matches_torch_adamw_over_groups_and_steps():
    ours, ref = make_params(), make_params()
    opt, torch_opt = FusedAdamW(groups_of(ours), flat=False), torch.optim.AdamW(groups_of(ref))
    for step in range(5):
        set_grads(ours, step)
        set_grads(ref, step)
        opt.step()
        torch_opt.step()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_bf16_params_with_masters_follow_an_fp32_run():
    ours, ref = make_params(torch.bfloat16), [torch.nn.Parameter(p.detach().float()) for p in make_params(torch.bfloat16)]
    opt = FusedAdamW(ours, lr=1e-2, master_weights=True, flat=False)
    torch_opt = torch.optim.AdamW(ref, lr=1e-2)
    for step in range(4):
        set_grads(ours, step)
        for p, q in zip(ref, ours):
            p.grad = q.grad.float()
        opt.step()
        torch_opt.step()
    for p, a, b in zip(ours, opt.state.values(), ref):
        torch.testing.assert_close(a["master"], b.detach(), rtol=1e-5, atol=1e-6)
        assert torch.equal(p.detach(), a["master"].to(torch.bfloat16))


def test_an_inf_grad_skips_the_step_and_leaves_everything_as_it_was():
    params = make_params()
    opt = FusedAdamW(params, flat=False)
    set_grads(params, 0)
    opt.step()
    before = [p.detach().clone() for p in params]
    moments = [(s["exp_avg"].clone(), s["exp_avg_sq"].clone(), int(s["step"])) for s in opt.state.values()]
    set_grads(params, 1)
    params[3].grad[0, 1, 2] = float("inf")
    norm = opt.grad_norm()
    found_inf = (~torch.isfinite(norm)).float().reshape(1)
    opt.step(found_inf=found_inf)
    assert opt.last_step_skipped and opt.skipped_steps == 1
    for p, b in zip(params, before):
        assert torch.equal(p.detach(), b)
    for s, (m, v, step) in zip(opt.state.values(), moments):
        assert torch.equal(s["exp_avg"], m) and torch.equal(s["exp_avg_sq"], v) and int(s["step"]) == step


def test_grad_scale_and_clipping_equal_scaled_grads():
    ours, ref = make_params(), make_params()
    opt, torch_opt = FusedAdamW(ours, flat=False), torch.optim.AdamW(ref)
    set_grads(ours, 0)
    set_grads(ref, 0)
    norm, scale = opt.clip_scale(0.5)
    expected = torch.nn.utils.clip_grad_norm_(ref, 0.5)
    torch.testing.assert_close(norm, expected)
    opt.step(grad_scale=scale)
    torch_opt.step()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_state_dict_round_trips_and_loads_torch_adamw_state():
    ref = make_params()
    torch_opt = torch.optim.AdamW(groups_of(ref))
    for step in range(3):
        set_grads(ref, step)
        torch_opt.step()
    ours = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    opt = FusedAdamW(groups_of(ours), flat=False)
    opt.load_state_dict(torch_opt.state_dict())
    again = FusedAdamW(groups_of([torch.nn.Parameter(p.detach().clone()) for p in ref]), flat=False)
    again.load_state_dict(opt.state_dict())
    for step in range(3, 5):
        for params in (ours, ref):
            set_grads(params, step)
        opt.step()
        torch_opt.step()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert [int(s["step"]) for s in again.state.values()] == [3] * len(SHAPES)


def test_a_state_of_the_wrong_shape_is_refused():
    opt = FusedAdamW(make_params(), flat=False)
    state = opt.state_dict()
    state["state"][0]["exp_avg"] = torch.zeros(3)
    with pytest.raises(ValueError, match="does not fit"):
        FusedAdamW(make_params(), flat=False).load_state_dict(state)


def test_frozen_params_and_params_without_grads_get_no_update_and_no_state():
    params = make_params()
    params[0].requires_grad_(False)
    opt = FusedAdamW(params, flat=False)
    assert params[0] not in opt.state
    before = params[1].detach().clone()
    set_grads(params[2:], 0)
    opt.step()
    assert torch.equal(params[1].detach(), before) and int(opt.state[params[1]]["step"]) == 0
    assert int(opt.state[params[2]]["step"]) == 1


def test_a_step_on_meta_runs_and_a_cpu_tensor_mixed_in_raises():
    with torch.device("meta"):
        params = [torch.nn.Parameter(torch.empty(s)) for s in SHAPES]
    opt = FusedAdamW(params, flat=False)
    for p in params:
        p.grad = torch.empty_like(p)
    norm, scale = opt.clip_scale(1.0)
    opt.step(grad_scale=scale)
    assert norm.device.type == "meta" and all(s["exp_avg"].device.type == "meta" for s in opt.state.values())
    opt.state[params[1]]["exp_avg"] = torch.zeros(params[1].shape)   # a CPU moment beside meta params
    with pytest.raises(Exception, match="(?i)device|is on cpu but"):
        opt.step()
