"""FusedAdamW step time against torch.optim.AdamW (fused=True and foreach=True) on this CPU.

Run: pytest -m bench tests/bench/test_adamw.py -s  (-k multi: the multi-tensor op alone)
GB/s counts 28 bytes per parameter (read param, grad, exp_avg, exp_avg_sq; write param,
exp_avg, exp_avg_sq; for bf16 params with fp32 masters the same 28 bytes: bf16 grad and
param, fp32 master and moments). "% RMW" compares with a.add_(b) measured in the same run.
"""
import pytest
import torch

from minilvlm.optim import FusedAdamW
from tests.bench.common import median_ms, print_table, rmw_bandwidth_gbs

pytestmark = pytest.mark.bench
BYTES_PER_PARAM = 28


def make_params(shapes, dtype=torch.float32):
    params = [torch.nn.Parameter(torch.randn(s).to(dtype)) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def torch_step(shapes, **kwargs):
    opt = torch.optim.AdamW(make_params(shapes), lr=1e-3, weight_decay=0.01, **kwargs)
    return opt.step


def ours_step(shapes, dtype=torch.float32, master=False):
    opt = FusedAdamW(make_params(shapes, dtype), lr=1e-3, weight_decay=0.01, master_weights=master)
    return opt.step


def torch_mixed_composition(shapes):
    """The fastest PyTorch composition we found for bf16 params with fp32 masters: copy the bf16
    grads into fp32 master grads, fused AdamW on the masters, copy the masters back to bf16."""
    params = make_params(shapes, torch.bfloat16)
    masters = [torch.nn.Parameter(p.detach().float()) for p in params]
    for m in masters:
        m.grad = torch.empty_like(m)
    opt = torch.optim.AdamW(masters, lr=1e-3, weight_decay=0.01, fused=True)

    @torch.no_grad()
    def step():
        torch._foreach_copy_([m.grad for m in masters], [p.grad for p in params])
        opt.step()
        torch._foreach_copy_(params, masters)
    return step


def row(name, impl, numel, ms, rmw, baseline_ms=None):
    gbs = BYTES_PER_PARAM * numel / ms / 1e6
    ratio = f"{baseline_ms / ms:.2f}x" if baseline_ms else ""
    return [name, impl, f"{ms:.2f}", f"{gbs:.1f}", f"{100 * gbs / rmw:.0f}%", ratio]


def test_adamw_step_speed():
    torch.manual_seed(0)
    rmw = rmw_bandwidth_gbs()
    rows = []
    cases = [("fp32 1x10M", [(10_000_000,)]), ("fp32 1x50M", [(50_000_000,)]),
             ("fp32 2000x4096", [(4096,)] * 2000)]
    for name, shapes in cases:
        numel = sum(s[0] for s in shapes)
        ours = median_ms(ours_step(shapes))
        fused = median_ms(torch_step(shapes, fused=True))
        foreach = median_ms(torch_step(shapes, foreach=True))
        rows.append(row(name, "minilvlm FusedAdamW", numel, ours, rmw))
        rows.append(row(name, "torch AdamW(fused=True)", numel, fused, rmw, None))
        rows.append(row(name, "torch AdamW(foreach=True)", numel, foreach, rmw, None))
        rows[-3][-1] = f"{fused / ours:.2f}x fused, {foreach / ours:.2f}x foreach"
    for name, shapes in [("bf16+fp32 master 1x50M", [(50_000_000,)]),
                         ("bf16+fp32 master 2000x4096", [(4096,)] * 2000)]:
        numel = sum(s[0] for s in shapes)
        ours = median_ms(ours_step(shapes, torch.bfloat16, master=True))
        composed = median_ms(torch_mixed_composition(shapes))
        rows.append(row(name, "minilvlm FusedAdamW(master_weights)", numel, ours, rmw, composed))
        rows.append(row(name, "torch copy + fused AdamW + copy", numel, composed, rmw))
    print_table(f"AdamW step, {torch.get_num_threads()} threads; a.add_(b) RMW bandwidth {rmw:.1f} GB/s",
                ["case", "implementation", "median ms", "GB/s", "% RMW", "speed-up of ours"], rows)
    assert all(float(r[2]) > 0 for r in rows)


def multi_op_step(shapes, dtype=torch.float32, master=False):
    """torch.ops.minilvlm.fused_adamw_multi_ on one list of tensors (a step of FusedAdamW(flat=False))."""
    params = [torch.randn(s).to(dtype) for s in shapes]
    lists = (params, [torch.randn_like(p) for p in params], [torch.zeros(s) for s in shapes],
             [torch.zeros(s) for s in shapes], [p.float() for p in params] if master else [])
    count = len(shapes)
    return lambda: torch.ops.minilvlm.fused_adamw_multi_(*lists, [1e-3] * count, [0.01] * count, [1] * count,
                                                         0.9, 0.999, 1e-8, None, None)


def flat_op_step(numel, dtype=torch.float32, master=False):
    """torch.ops.minilvlm.fused_adamw_ on one flat buffer holding every element, as one segment."""
    param = torch.randn(numel).to(dtype)
    bufs = (param, torch.randn_like(param), torch.zeros(numel), torch.zeros(numel), param.float() if master else None)
    return lambda: torch.ops.minilvlm.fused_adamw_(*bufs, [0, numel], [1e-3], [0.01], [1], 0.9, 0.999, 1e-8, None)


def test_multi_tensor_step_speed():
    """fused_adamw_multi_ against torch.optim.AdamW (fused=True, foreach=True) on 2,000 tensors of 4,096
    elements, and against our flat op on the same elements as one buffer (and as one big tensor)."""
    torch.manual_seed(0)
    rmw = rmw_bandwidth_gbs()
    rows = []
    for name, shapes in [("fp32 2000x4096", [(4096,)] * 2000), ("fp32 1x8192000", [(8_192_000,)])]:
        numel = sum(s[0] for s in shapes)
        times = {"minilvlm fused_adamw_multi_": median_ms(multi_op_step(shapes)),
                 "torch AdamW(fused=True)": median_ms(torch_step(shapes, fused=True)),
                 "torch AdamW(foreach=True)": median_ms(torch_step(shapes, foreach=True)),
                 "minilvlm fused_adamw_ (one flat buffer)": median_ms(flat_op_step(numel))}
        ours = times["minilvlm fused_adamw_multi_"]
        for impl, ms in times.items():
            rows.append(row(name, impl, numel, ms, rmw, None))
            rows[-1][-1] = "" if ms is ours else f"{ms / ours:.2f}x"
    for name, shapes in [("bf16+fp32 master 2000x4096", [(4096,)] * 2000)]:
        numel = sum(s[0] for s in shapes)
        ours = median_ms(multi_op_step(shapes, torch.bfloat16, master=True))
        flat = median_ms(flat_op_step(numel, torch.bfloat16, master=True))
        composed = median_ms(torch_mixed_composition(shapes))
        rows.append(row(name, "minilvlm fused_adamw_multi_ (masters)", numel, ours, rmw))
        rows.append(row(name, "minilvlm fused_adamw_ (one flat buffer)", numel, flat, rmw))
        rows[-1][-1] = f"{flat / ours:.2f}x"
        rows.append(row(name, "torch copy + fused AdamW + copy", numel, composed, rmw))
        rows[-1][-1] = f"{composed / ours:.2f}x"
    print_table(f"AdamW multi-tensor step, {torch.get_num_threads()} threads; a.add_(b) RMW bandwidth {rmw:.1f} GB/s; "
                "last column: that implementation's time / fused_adamw_multi_'s (above 1: ours is faster)",
                ["case", "implementation", "median ms", "GB/s", "% RMW", "time / ours"], rows)
    assert all(float(r[2]) > 0 for r in rows)
