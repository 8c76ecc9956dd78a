"""Worker side of the ZeroAdamW tests: run under torch.multiprocessing (spawn) or torchrun.

Each rank's grad is the mean of its share of MICRO_STEPS micro-grads, so the global batch is the
same at every world size. Micro-grads are multiples of 3/16 with small numerators: every sum and
every division by 1, 2 or 3 below is exact in fp32 and bf16. The reduce-scatter then sums exactly
what a single process sums, and differences left are the optimizer's own (or the rounding of the
1/world_size factor, which is not exact for 3 ranks).
"""
import datetime
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

import minilvlm.train.distributed  # noqa: F401  (import order: keeps the gloo group destroyable)

MICRO_STEPS = 6  # micro-grads per global step, divisible by every world size tested (1, 2, 3)
SHAPES = [(37,), (64, 17), (5,), (3, 7, 11), (102,)]  # 1,463 elements: divisible by neither 2 nor 3


def make_params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in SHAPES]


def groups(params):
    return [{"params": params[:2], "lr": 1e-2, "weight_decay": 0.1},
            {"params": params[2:4], "weight_decay": 0.0},
            {"params": params[4:], "lr": 3e-3}]


def micro_grads(step, dtype):
    g = torch.Generator().manual_seed(10_000 + step)
    return [[(torch.randint(-7, 8, s, generator=g).float() * 3 / 16).to(dtype) for s in SHAPES]
            for _ in range(MICRO_STEPS)]


def local_grads(step, rank, world, dtype):
    """This rank's grad: the mean over its share of the global batch's micro-grads."""
    per_rank = MICRO_STEPS // world
    mine = micro_grads(step, dtype)[rank * per_rank:(rank + 1) * per_rank]
    return [(sum(m[i].float() for m in mine) / per_rank).to(dtype) for i in range(len(SHAPES))]


def summed_grads(step, world, dtype):
    """What the reduce-scatter produces: the sum of every rank's grad (exact)."""
    per_rank = [local_grads(step, r, world, dtype) for r in range(world)]
    return [sum(g[i].float() for g in per_rank).to(dtype) for i in range(len(SHAPES))]


def rel_to_max(a, b):
    """max |a - b| / max |b|: relative error on the tensor's scale."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max()).item()


def max_rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs() / b.abs().clamp_min(1e-6)).max().item()


def train_zero(opt, params, steps, rank, world, dtype, max_norm=None):
    for step in steps:
        opt.zero_grad(set_to_none=False)  # the grads stay zeroed views of the flat buffer, written in place
        for p, g in zip(params, local_grads(step, rank, world, dtype)):
            p.grad.copy_(g)
        scale = None
        if max_norm is not None:
            _, scale = opt.clip_scale(max_norm)
        opt.step(grad_scale=scale)


def train_reference(opt, params, steps, world, dtype, max_norm=None):
    """Single-process FusedAdamW on the global batch: the grads are the sum over ranks, and the
    1/world of the average goes in through grad_scale, as ZeroAdamW does."""
    for step in steps:
        for p, g in zip(params, summed_grads(step, world, dtype)):
            p.grad.copy_(g)
        scale = torch.tensor(1.0 / world)
        if max_norm is not None:
            norm = opt.grad_norm() / world
            scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0) / world
        opt.step(grad_scale=scale)


def scenario_parity(rank, world, dtype, master, max_norm):
    from minilvlm.optim import FusedAdamW, ZeroAdamW
    params = make_params(dtype)
    opt = ZeroAdamW(groups(params), lr=1e-3, master_weights=master)
    train_zero(opt, params, range(20), rank, world, dtype, max_norm)
    ref_params = make_params(dtype)
    ref = FusedAdamW(groups(ref_params), lr=1e-3, master_weights=master)
    train_reference(ref, ref_params, range(20), world, dtype, max_norm)
    result = {"param_rel": max(max_rel(p, q) for p, q in zip(params, ref_params)), "collectives": opt.collectives}
    n = sum(p.numel() for p in params)
    result["numel"], result["state_bytes"] = n, opt.state_bytes()
    result["state_elems"] = [t.numel() for f in opt._flats for t in (f.exp_avg, f.exp_avg_sq, f.master)
                             if t is not None]
    if master:  # this rank's master slice against the same slice of the reference's masters
        flat, ref_flat = opt._flats[0], ref._flats[0]
        lo, hi = flat.shard
        hi = min(hi, flat.used)
        ref_master = torch.cat([ref_flat.view(ref_flat.master, i).reshape(-1) for i in range(len(params))])
        result["master_rel"] = max_rel(flat.master[:hi - lo], ref_master[lo:hi]) if hi > lo else 0.0
        result["param_is_rounded_master"] = bool(torch.equal(opt.shard_of(flat)[:hi - lo],
                                                             flat.master[:hi - lo].to(dtype)))
    del opt, ref
    return result


def scenario_accumulate(rank, world):
    """Gradient accumulation through autograd: one backward per micro-batch, no collective until
    step(); the result equals the parity run's, whose grads were set in one go."""
    from minilvlm.optim import FusedAdamW, ZeroAdamW
    group = dist.distributed_c10d._get_default_group()
    params = make_params(torch.float32)
    opt = ZeroAdamW(groups(params), lr=1e-3)
    per_rank = MICRO_STEPS // world
    collectives_in_backward = 0
    for step in range(5):
        opt.zero_grad()
        mine = micro_grads(step, torch.float32)[rank * per_rank:(rank + 1) * per_rank]
        before = group._get_sequence_number_for_group()
        for micro in mine:  # loss = <params, micro> / per_rank: its grad is micro / per_rank
            loss = sum((p * g).sum() for p, g in zip(params, micro)) / per_rank
            loss.backward()
        collectives_in_backward += group._get_sequence_number_for_group() - before
        opt.step()
    ref_params = make_params(torch.float32)
    ref = FusedAdamW(groups(ref_params), lr=1e-3)
    train_reference(ref, ref_params, range(5), world, torch.float32)
    result = {"param_rel": max(max_rel(p, q) for p, q in zip(params, ref_params)),
              "collectives_in_backward": collectives_in_backward,
              "collectives_total": group._get_sequence_number_for_group()}
    del opt, ref
    return result


def zero_state(opt):
    """Copies of what a step may change on this rank: full params, local moments and masters, step counts."""
    flat = opt._flats[0]
    return [flat.param.clone(), flat.exp_avg.clone(), flat.exp_avg_sq.clone(), flat.master.clone(), list(flat.steps)]


def scenario_skip(rank, world):
    """fp16 params with fp32 masters and LossScaler. Step 2: an inf in one rank's grads only; step 4:
    finite grads but a found_inf raised on rank 0 only. Both steps are skipped on every rank with
    nothing changed, and the run then equals FusedAdamW that only took the other steps."""
    from minilvlm.optim import FusedAdamW, LossScaler, ZeroAdamW
    dtype, bad_steps = torch.float16, (2, 4)
    params = make_params(dtype)
    opt = ZeroAdamW(groups(params), lr=1e-3, master_weights=True)
    scaler = LossScaler(init_scale=2.0 ** 8, growth_interval=1000)
    result = {"skipped": [], "scales": [], "unchanged": []}
    for step in range(6):
        opt.zero_grad()
        loss = sum((p.float() * g.float()).sum() for p, g in zip(params, local_grads(step, rank, world, dtype)))
        scaler.scale(loss).backward()
        if step == 2 and rank == world - 1:
            params[1].grad.view(-1)[3] = float("inf")
        before = zero_state(opt)
        if step == 4:
            opt.step(grad_scale=1.0 / scaler.get_scale(), found_inf=torch.tensor([float(rank == 0)]))
        else:
            scaler.step(opt)
        result["skipped"].append(opt.last_step_skipped)
        result["scales"].append(scaler.get_scale())
        if step in bad_steps:
            after = zero_state(opt)
            result["unchanged"].append(all(torch.equal(a, b) for a, b in zip(before[:4], after[:4]))
                                       and before[4] == after[4])
    ref_params = make_params(dtype)
    ref = FusedAdamW(groups(ref_params), lr=1e-3, master_weights=True)
    train_reference(ref, ref_params, [s for s in range(6) if s not in bad_steps], world, dtype)
    result["param_rel"] = max(max_rel(p, q) for p, q in zip(params, ref_params))
    result["steps"] = sorted(set(opt._flats[0].steps))
    del opt, ref
    return result


def scenario_save(rank, world, out_dir):
    """Train 5 steps, save a sharded checkpoint and the params, go on to step 10."""
    from safetensors.torch import save_file

    from minilvlm.optim import ZeroAdamW, save_sharded
    params = make_params(torch.float32)
    opt = ZeroAdamW(groups(params), lr=1e-3)
    train_zero(opt, params, range(5), rank, world, torch.float32)
    save_sharded(opt, Path(out_dir) / "ckpt")
    if rank == 0:
        save_file({str(i): p.detach().clone() for i, p in enumerate(params)}, str(Path(out_dir) / "params5.safetensors"))
    train_zero(opt, params, range(5, 10), rank, world, torch.float32)
    if rank == 0:
        save_file({str(i): p.detach().clone() for i, p in enumerate(params)}, str(Path(out_dir) / "params10.safetensors"))
    del opt
    return {}


def scenario_resume(rank, world, out_dir):
    """Resume the checkpoint of scenario_save at another world size; run steps 5..9."""
    from safetensors.torch import load_file

    from minilvlm.optim import ZeroAdamW, load_sharded
    saved = load_file(str(Path(out_dir) / "params5.safetensors"))
    params = [torch.nn.Parameter(saved[str(i)]) for i in range(len(SHAPES))]
    opt = ZeroAdamW(groups(params), lr=0.5)
    load_sharded(opt, Path(out_dir) / "ckpt")
    lr_restored = opt.param_groups[0]["lr"] == 1e-2
    train_zero(opt, params, range(5, 10), rank, world, torch.float32)
    expected = load_file(str(Path(out_dir) / "params10.safetensors"))
    result = {"param_rel": max(rel_to_max(p, expected[str(i)]) for i, p in enumerate(params)),
              "lr_restored": lr_restored}
    del opt
    return result


def worker(rank, world, init_file, out_dir, scenario, kwargs):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        kwargs = dict(kwargs)
        if "dtype" in kwargs:
            kwargs["dtype"] = getattr(torch, kwargs["dtype"])
        result = globals()[f"scenario_{scenario}"](rank, world, **kwargs)
        Path(out_dir, f"result-{rank}.json").write_text(json.dumps(result))
    finally:
        dist.barrier()
        dist.destroy_process_group()


# ---- torchrun entry point: a training loop in which one rank dies or raises ----------------

def main():
    from minilvlm.optim import ZeroAdamW
    from minilvlm.train.distributed import init_distributed, shutdown_distributed
    how = sys.argv[1]  # "kill" or "raise"
    rank, world = init_distributed(timeout_s=20)
    params = make_params(torch.float32)
    opt = ZeroAdamW(groups(params), lr=1e-3)
    for step in range(1000):
        if rank == world - 1 and step == 3:
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("deliberate failure on the last rank")
        train_zero(opt, params, [step], rank, world, torch.float32)
        time.sleep(0.01)
    del opt
    shutdown_distributed()


if __name__ == "__main__":
    main()
