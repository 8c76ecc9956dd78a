"""ZeroAdamW at 2 ranks (gloo, CPU) on a 50M-parameter model against DDP + AdamW(fused=True) and
DDP + torch's ZeroRedundancyOptimizer. Each step is forward, backward, grad sync and update.

Run: pytest -m bench tests/bench/test_zero.py -s
"""
import datetime
import json
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import minilvlm.train.distributed  # noqa: F401  (import order: keeps the gloo group destroyable)
import torch.multiprocessing as mp

from tests.bench.common import print_table

pytestmark = pytest.mark.bench
NUM_PARAMS, TENSORS, STEPS = 50_000_000, 50, 5


class Flat(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weights = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.randn(NUM_PARAMS // TENSORS, generator=g) * 0.01) for _ in range(TENSORS)])

    def forward(self, x):
        return sum((w * x).sum() for w in self.weights)


def state_bytes(optimizer_states):
    return sum(t.numel() * t.element_size() for s in optimizer_states for t in s.values()
               if torch.is_tensor(t) and t.dim() > 0)


def time_steps(step):
    step()  # warm-up: allocates state and buffers
    dist.barrier()
    start = time.perf_counter()
    for _ in range(STEPS):
        step()
    dist.barrier()
    return (time.perf_counter() - start) / STEPS * 1e3


def worker(rank, world, init_file, out):
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    from minilvlm.optim import ZeroAdamW
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=300))
    x = torch.full((1,), float(rank + 1))
    results = {}

    def timed(model, opt):
        def step():
            opt.zero_grad()
            model(x).backward()
            opt.step()
        return time_steps(step)

    model = Flat()
    opt = ZeroAdamW(model.parameters(), lr=1e-4)
    results["minilvlm ZeroAdamW"] = (timed(model, opt), opt.state_bytes())
    del opt, model

    model = DDP(Flat())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    results["DDP + AdamW(fused=True)"] = (timed(model, opt), state_bytes(opt.state.values()))
    del opt, model

    model = DDP(Flat())
    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.AdamW, lr=1e-4, fused=True)
    results["DDP + ZeroRedundancyOptimizer(AdamW fused)"] = (timed(model, opt),
                                                               state_bytes(opt.optim.state.values()))
    del opt, model

    Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


def test_zero_step_and_memory(tmp_path):
    world = 2
    mp.spawn(worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world)
    per_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    ddp_ms, ddp_bytes = per_rank[0]["DDP + AdamW(fused=True)"]
    rows = []
    for name in per_rank[0]:
        ms = max(r[name][0] for r in per_rank)
        peak = max(r[name][1] for r in per_rank)
        rows.append([name, f"{ms:.0f}", f"{peak / 2**20:.0f}", f"{100 * peak / ddp_bytes:.0f}%",
                     f"{ddp_ms / ms:.2f}x"])
    print_table(f"{world} ranks, gloo, {NUM_PARAMS / 1e6:.0f}M fp32 params in {TENSORS} tensors, {STEPS} steps",
                ["setup", "step ms", "optimizer state MiB/rank", "% of DDP state", "speed vs DDP"], rows)
    assert all(float(r[1]) > 0 for r in rows)
