"""fp16 training steps: FusedAdamW with fp16 params and fp32 masters against torch.optim.AdamW, the step
skipped on inf/NaN grads (found_inf) with LossScaler, on the CPU kernel and the emulated CUDA kernel,
and the one host sync such a step is allowed."""
import pytest
import torch

import minilvlm.optim.fused_adamw as fused_adamw_module
from minilvlm.optim import FusedAdamW, LossScaler
from tests.conftest import max_rel_diff
from tests.ops.dispatch_log import DispatchLog
from tests.optim.test_fused_adamw_optim import make_params, random_grads, run_master_parity, three_groups


@pytest.fixture(params=["cpu", "emu"])
def kernel(request, monkeypatch):
    """Runs the test on the CPU kernel, then on the CUDA kernel under the emulator."""
    if request.param == "emu":
        emu = request.getfixturevalue("emu")
        monkeypatch.setattr(fused_adamw_module, "fused_adamw_", emu.fused_adamw_)
    return request.param


def test_fp16_params_with_fp32_masters_match_torch_adamw(kernel):
    """100 steps of fp16 params: the fp32 masters follow torch.optim.AdamW run on fp32 copies, and each
    fp16 param is its master rounded to nearest."""
    assert run_master_parity(torch.float16) <= 1e-6


def snapshot(opt):
    """Every buffer a step may write, and the step counts, as copies."""
    flat = opt._flats[0]
    return {"param": flat.param.clone(), "master": flat.master.clone(), "exp_avg": flat.exp_avg.clone(),
            "exp_avg_sq": flat.exp_avg_sq.clone(), "steps": list(flat.steps)}


def scaled_backward(params, scaler, step, overflow):
    """Grads of a loss whose grad is random_grads(step), scaled by the scaler; one inf when overflow."""
    loss = sum((p.float() * g.float()).sum() for p, g in zip(params, random_grads(params, step)))
    scaler.scale(loss).backward()
    if overflow:
        params[3].grad.view(-1)[5] = float("inf")


def test_inf_grad_skips_the_step_and_halves_the_scale(kernel):
    check_inf_grad_skip()


def check_inf_grad_skip(device="cpu"):
    """An inf grad: params, masters, moments and step counts stay exactly as they were, the scale
    halves; the steps before and after are ordinary ones, so the run continues like torch.optim.AdamW
    that never saw the bad step (its bias corrections prove the step counts were put back)."""
    params = make_params(torch.float16, device=device)
    masters = [torch.nn.Parameter(p.detach().float()) for p in params]
    opt = FusedAdamW(three_groups(params), lr=1e-3, master_weights=True)
    ref = torch.optim.AdamW(three_groups(masters), lr=1e-3, foreach=False)
    scaler = LossScaler(init_scale=2.0 ** 10, growth_interval=1000)
    for step in range(6):
        opt.zero_grad()
        scaled_backward(params, scaler, step, overflow=step == 3)
        before, scale_before = snapshot(opt), scaler.get_scale()
        norm = scaler.step(opt, max_norm=None)
        if step == 3:
            assert opt.last_step_skipped and not torch.isfinite(norm)
            assert scaler.get_scale() == scale_before / 2
            after = snapshot(opt)
            for key in before:
                assert (after[key] == before[key]) if key == "steps" else torch.equal(after[key], before[key]), key
            continue
        assert not opt.last_step_skipped and scaler.get_scale() == scale_before
        for q, g in zip(masters, random_grads(params, step)):
            q.grad = g.half().float()  # the grad as fp16 backward rounds it; scaling by 2^k is exact
        ref.step()
    assert opt.skipped_steps == 1 and opt._flats[0].steps == [5] * len(params)
    flat = opt._flats[0]
    assert max(max_rel_diff(flat.view(flat.master, i), q) for i, q in enumerate(masters)) <= 1e-6


def test_clipping_and_unscaling_happen_in_the_kernel(kernel):
    """LossScaler.step(max_norm): the grad norm it returns is the unscaled one, and the update equals
    torch's clip_grad_norm_ + AdamW on the unscaled grads."""
    params = make_params(torch.float32)
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = FusedAdamW(params, lr=1e-2)
    ref = torch.optim.AdamW(theirs, lr=1e-2, foreach=False)
    scaler = LossScaler(init_scale=256.0)
    for step in range(4):
        opt.zero_grad()
        scaled_backward(params, scaler, step, overflow=False)
        norm = scaler.step(opt, max_norm=0.5)
        for q, g in zip(theirs, random_grads(params, step)):
            q.grad = g.clone()
        torch.testing.assert_close(norm, torch.nn.utils.clip_grad_norm_(theirs, max_norm=0.5), rtol=1e-5, atol=0)
        ref.step()
    assert max((p - q).abs().max().item() / q.abs().max().item() for p, q in zip(params, theirs)) <= 1e-5


def test_one_host_read_per_step_with_found_inf():
    """Three flat buffers (fp32, bf16, fp16 params): a step with found_inf reads the host once in all,
    one without reads it never; the grad norm that makes the flag is read never."""
    params = make_params(torch.float32)[:2] + make_params(torch.bfloat16)[2:4] + make_params(torch.float16)[4:]
    opt = FusedAdamW(params, master_weights=True)
    assert len(opt._flats) == 3
    for p in params:
        p.grad.fill_(0.5)
    scaler = LossScaler()
    for _ in range(2):
        with DispatchLog() as log:
            scaler.step(opt, max_norm=1.0)
        assert log.host_reads() == 1
    with DispatchLog() as log:
        opt.step(grad_scale=0.5)
        opt.grad_norm()
        opt.clip_scale(1.0)
    assert log.host_reads() == 0
