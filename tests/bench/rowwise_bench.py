"""The instrument of the row and elementwise op benchmarks (test_rms_norm.py, test_layer_norm.py,
test_swiglu.py, test_gelu.py): one forward+backward step of our op and of each PyTorch composition
that computes the same thing, timed in interleaved rounds (the best of five medians each, the
implementations taking turns, tests/bench/test_patch_embed.py), with the bytes our op must move
turned into GB/s and set against the a.add_(b) read-modify-write bandwidth measured in the same run.

The shapes: the small llava of tests/bench/train_step_worker.py (8 x 256 tokens, LM dim 512, MLP 1408;
ViT dim 256 and MLP 1024 over 8 x 65 tokens), and LLaMA-7B's widths (4096, MLP 11008) over 2048 tokens.
"""
import torch

from tests.bench.common import print_table, rmw_bandwidth_gbs
from tests.bench.test_patch_embed import interleaved_ms

TOKENS = 8 * 256
VIT_TOKENS = 8 * 65
DTYPES = (torch.float32, torch.bfloat16)


def training_step(fn, inputs, grad_outputs):
    """fn(*inputs) forward and backward with grad_outputs (None: that output unused), fresh grads each call."""
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]

    def step():
        for t in leaves:
            t.grad = None
        outs = fn(*inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        pairs = [(o, g) for o, g in zip(outs, grad_outputs) if g is not None]
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
    return step


def leaf(*shape, dtype, seed, scale=1.0, shift=0.0, grad=True):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale + shift).to(dtype).requires_grad_(grad)


def compare(rows, case, dtype, ours, alternatives, bytes_per_step, rmw):
    """Times ours against each named alternative (all steps of the same work) and appends table rows:
    ours first with its speed-up over the best alternative, then the alternatives."""
    times = interleaved_ms([ours, *alternatives.values()])
    best_name, best = min(zip(alternatives, times[1:]), key=lambda item: item[1])
    label = str(dtype).replace("torch.", "")

    def gbs(ms):
        return bytes_per_step / ms / 1e6

    rows.append([case, label, "minilvlm", f"{times[0]:.3f}", f"{gbs(times[0]):.1f}", f"{100 * gbs(times[0]) / rmw:.0f}%",
                 f"{best / times[0]:.2f}x vs {best_name}"])
    for name, ms in zip(alternatives, times[1:]):
        rows.append([case, label, name, f"{ms:.3f}", f"{gbs(ms):.1f}", f"{100 * gbs(ms) / rmw:.0f}%", ""])


def run_table(title, cases):
    """cases: an iterable of callables rows_for(rows, rmw) that append their rows; prints the table."""
    rmw = rmw_bandwidth_gbs()
    rows = []
    for rows_for in cases:
        rows_for(rows, rmw)
    print_table(f"{title}, forward+backward, {torch.get_num_threads()} threads; a.add_(b) RMW bandwidth {rmw:.1f} GB/s "
                "(GB/s counts the bytes our op moves)",
                ["case", "dtype", "implementation", "median ms", "GB/s", "% RMW", "speed-up"], rows)
    return rows
