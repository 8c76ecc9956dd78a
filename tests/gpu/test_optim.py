"""FusedAdamW and ZeroAdamW on CUDA against torch.optim.AdamW; the fp16 step skipped on inf grads; the
one host sync such a step makes; ZeroAdamW over NCCL on two GPUs."""
import json
import warnings

import pytest
import torch
import torch.multiprocessing as mp

from minilvlm.optim import FusedAdamW, LossScaler
from tests.gpu import GPU
from tests.optim.test_fp16_steps import check_inf_grad_skip
from tests.optim.test_fused_adamw_optim import make_params, run_master_parity, run_parity

pytestmark = GPU


def test_fused_adamw_fp32_matches_torch_adamw():
    assert run_parity(device="cuda") <= 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_fused_adamw_masters_match_torch_adamw(dtype):
    assert run_master_parity(dtype, device="cuda") <= 1e-6


def test_inf_grad_skips_the_step_and_halves_the_scale():
    check_inf_grad_skip(device="cuda")


def count_syncs(fn):
    """How many synchronizing CUDA calls fn makes (torch's sync debug mode warns on each)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


def test_one_host_sync_per_step_with_found_inf():
    """Three flat buffers (fp32, bf16, fp16): a LossScaler step (grad norm, clip, unscale, skip check,
    scale update) syncs once in all; a plain step never."""
    params = (make_params(torch.float32, device="cuda")[:2] + make_params(torch.bfloat16, device="cuda")[2:4]
              + make_params(torch.float16, device="cuda")[4:])
    opt = FusedAdamW(params, master_weights=True)
    scaler = LossScaler()
    for p in params:
        p.grad.fill_(0.5)
    scaler.step(opt, max_norm=1.0)  # the first step warms the caches (device queries, allocator)
    assert count_syncs(lambda: scaler.step(opt, max_norm=1.0)) == 1
    assert count_syncs(lambda: opt.step(grad_scale=opt.clip_scale(1.0)[1])) == 0


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.device_count() < 2,  # no device at all: GPU's reason
                    reason=f"ZeroAdamW over NCCL needs two CUDA devices, found {torch.cuda.device_count()}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_zero_adamw_over_nccl_matches_torch_adamw(dtype, tmp_path):
    from tests.gpu import zero_nccl_worker
    world = 2
    mp.spawn(zero_nccl_worker.worker, args=(world, str(tmp_path / "init"), str(tmp_path), str(dtype)[6:]),
             nprocs=world)
    for rank in range(world):
        result = json.loads((tmp_path / f"result-{rank}.json").read_text())
        assert result["rel"] <= 1e-6, result
        assert result["skipped"] == [False, False, True, False], result
