"""FusedAdamW and ZeroAdamW step on meta parameters (what a dry run does): the flat buffers, the grad
norm, the loss scaler and the kernel call all stay on meta, and no tensor is made on the CPU.
ZeroAdamW runs at 4 "ranks" in one process through torch's fake process group, whose collectives
accept meta tensors and do nothing."""
import pytest
import torch
import torch.distributed as dist

from minilvlm.optim import FusedAdamW, LossScaler, ZeroAdamW
from tests.ops.dispatch_log import DispatchLog

SHAPES = [(37,), (64, 17), (5,), (3, 7, 11)]


def meta_params(dtypes):
    return [torch.nn.Parameter(torch.empty(s, device="meta", dtype=d)) for s, d in zip(SHAPES, dtypes)]


def scaled_step(opt, params):
    """One fp16-style step: backward of a scaled loss, then LossScaler.step (clip, skip check)."""
    scaler = LossScaler()
    opt.zero_grad()
    loss = sum((p.float() * 2).sum() for p in params)
    scaler.scale(loss).backward()
    return scaler.step(opt, max_norm=1.0)


@pytest.mark.parametrize("dtypes", [[torch.float32] * 4, [torch.float16, torch.float32, torch.bfloat16, torch.float16]])
def test_fused_adamw_steps_on_meta_without_cpu_tensors(dtypes):
    with DispatchLog() as log:
        params = meta_params(dtypes)
        opt = FusedAdamW([{"params": params[:2]}, {"params": params[2:], "lr": 1e-4}], master_weights=True)
        norm = scaled_step(opt, params)
        opt.step()
        opt.step(grad_scale=0.5, found_inf=torch.zeros(1, device="meta"))
    assert norm.device.type == "meta" and norm.dtype == torch.float32
    assert all(f.param.device.type == "meta" and f.exp_avg.device.type == "meta" for f in opt._flats)
    assert all(f.master is not None for f in opt._flats if f.dtype != torch.float32)
    assert all(f.steps == [3] * len(f.params) for f in opt._flats)
    assert log.ran("minilvlm.fused_adamw_")
    assert log.ops_on("cpu") == []


@pytest.fixture
def fake_world():
    """A 4-rank fake process group in this process (torch.testing's FakeStore), destroyed afterwards."""
    from torch.testing._internal.distributed.fake_pg import FakeStore
    dist.init_process_group("fake", store=FakeStore(), rank=1, world_size=4)
    yield 4
    dist.destroy_process_group()


def test_zero_adamw_steps_on_meta_without_cpu_tensors(fake_world):
    with DispatchLog() as log:
        params = meta_params([torch.bfloat16] * 4)
        opt = ZeroAdamW(params, master_weights=True)
        norm = scaled_step(opt, params)
        opt.step(found_inf=torch.zeros(1, device="meta"))
    flat = opt._flats[0]
    assert norm.device.type == "meta"
    assert flat.numel % fake_world == 0 and flat.exp_avg.numel() == flat.numel // fake_world
    assert flat.master.device.type == "meta" and flat.master.numel() == flat.numel // fake_world
    assert flat.steps == [2] * len(params)
    assert log.ran("minilvlm.fused_adamw_") and log.ran("c10d.")
    assert log.ops_on("cpu") == []
