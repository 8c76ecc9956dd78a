"""FusedAdamW(flat=False) on the local shards of an FSDP2-wrapped demo model, against
torch.optim.AdamW (fused=True and foreach=True) on the same DTensor params, on this CPU.

Run: pytest -m bench tests/bench/test_adamw_fsdp.py -s
One process in a one-rank gloo group, so each local shard is a whole param: the tensor list the
optimizer walks is the one FSDP2 hands it (a DTensor per param, updated through its local tensor),
without a second process sharing the 2 cores. GB/s counts 28 bytes per parameter, as in
tests/bench/test_adamw.py."""
import os
import socket

import pytest
import torch
import torch.distributed as dist

from minilvlm import recipes
from minilvlm.optim import FusedAdamW
from minilvlm.recipes import load_config
from minilvlm.train.dry_run import dry_run_tokenizer
from minilvlm.train.sharding import shard_model
from tests.bench.common import median_ms, print_table, rmw_bandwidth_gbs

pytestmark = pytest.mark.bench


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def one_rank_group():
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(_free_port())
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def sharded_demo_model():
    cfg = load_config(None, ["train.sharding=fsdp"], check_paths=False)
    recipe = recipes.of(cfg)
    tokenizer, _ = dry_run_tokenizer(cfg)
    model = recipe.build_model(cfg, tokenizer, load_weights=False)
    recipe.set_stage(model, cfg)
    return shard_model(model, cfg)


def optimizer_step(model, make):
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer = make(params)
    return optimizer.step, sum(p.numel() for p in params), len(params)


def test_multi_tensor_adamw_on_fsdp2_shards(one_rank_group):
    torch.manual_seed(0)
    rmw = rmw_bandwidth_gbs()
    model = sharded_demo_model()
    impls = {"minilvlm FusedAdamW(flat=False)": lambda ps: FusedAdamW(ps, lr=1e-3, flat=False),
             "torch AdamW(fused=True)": lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
             "torch AdamW(foreach=True)": lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True)}
    times, numel, count = {}, 0, 0
    for name, make in impls.items():
        step, numel, count = optimizer_step(model, make)
        times[name] = median_ms(step, reps=20)
    ours = times["minilvlm FusedAdamW(flat=False)"]
    rows = [[f"demo model, {count} DTensor params", name, f"{ms:.3f}", f"{28 * numel / ms / 1e6:.1f}",
             f"{100 * 28 * numel / ms / 1e6 / rmw:.0f}%", "" if ms is ours else f"{ms / ours:.2f}x"]
            for name, ms in times.items()]
    print_table(f"AdamW on FSDP2 local shards ({numel:,} params), {torch.get_num_threads()} threads; a.add_(b) RMW "
                f"{rmw:.1f} GB/s; last column: time / ours (above 1: ours is faster)",
                ["case", "implementation", "median ms", "GB/s", "% RMW", "time / ours"], rows)
    assert all(ms > 0 for ms in times.values())
