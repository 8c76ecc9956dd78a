"""Worker of the two-GPU ZeroAdamW test (tests/gpu/test_optim.py): rank r trains on cuda:r over NCCL and
compares with torch.optim.AdamW run on the averaged grads; step 2 overflows on one rank only and must be
skipped on both. Grads come from tests/optim/zero_worker.py, whose sums and means are exact."""
import datetime
import json
from pathlib import Path

import torch
import torch.distributed as dist

from tests.optim.zero_worker import groups, local_grads, make_params, rel_to_max, summed_grads


def train(rank, world, dtype):
    from minilvlm.optim import LossScaler, ZeroAdamW
    device = torch.device("cuda", rank)
    params = [torch.nn.Parameter(p.detach().to(device)) for p in make_params(dtype)]
    masters = [torch.nn.Parameter(p.detach().float()) for p in params]  # the reference trains fp32 copies
    opt = ZeroAdamW(groups(params), lr=1e-3, master_weights=dtype != torch.float32)
    ref = torch.optim.AdamW(groups(masters), lr=1e-3, foreach=False)
    scaler = LossScaler(init_scale=2.0 ** 8)
    skipped = []
    for step in range(4):
        opt.zero_grad()
        grads = [g.to(device) for g in local_grads(step, rank, world, dtype)]
        scaler.scale(sum((p.float() * g.float()).sum() for p, g in zip(params, grads))).backward()
        if step == 2 and rank == 1:
            params[0].grad.view(-1)[0] = float("inf")
        scaler.step(opt)
        skipped.append(opt.last_step_skipped)
        if step != 2:
            for q, g in zip(masters, summed_grads(step, world, dtype)):
                q.grad = (g.float() / world).to(device)
            ref.step()
    flat = opt._flats[0]
    lo, hi = flat.shard
    hi = min(hi, flat.used)
    expected = torch.cat([q.detach().reshape(-1) for q in masters])[lo:hi]
    ours = (flat.master if flat.master is not None else opt.shard_of(flat))[:hi - lo]
    return {"rel": rel_to_max(ours, expected) if hi > lo else 0.0, "skipped": skipped}


def worker(rank, world, init_file, out_dir, dtype_name):
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120), device_id=torch.device("cuda", rank))
    try:
        result = train(rank, world, getattr(torch, dtype_name))
        Path(out_dir, f"result-{rank}.json").write_text(json.dumps(result))
    finally:
        dist.barrier()
        dist.destroy_process_group()
