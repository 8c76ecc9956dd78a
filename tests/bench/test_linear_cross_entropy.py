"""The LM head's loss, forward+backward, through linear_cross_entropy against torch compositions on this CPU.

Run: python -m pytest -m bench tests/bench/test_linear_cross_entropy.py -s
Shapes: the small llava of tests/bench/train_step_worker.py (batch 8 x 256 tokens, D 512, vocab
8192; the prompt of 65 tokens unlabelled, as there), LLaMA-7B width (D 4096, vocab 32000) and
Qwen2-0.5B's vocabulary (D 896, vocab 151936), both at batch 2 x 256 with the same labels. fp32, and
bf16 with bf16 parameters (pure bf16). One step: the loss of the final hidden states (grads for
them and the head), backward of loss / count. Alternatives, measured in the same run:
  plain            cross_entropy(F.linear(h, W)[:, :-1], labels[:, 1:]) over every position, fp32 logits
  selected rows    the same on the labelled positions only, all their logits at once
                   (minilvlm.ops.linear_cross_entropy_reference)
  previous chunked minilvlm's Python version before this op (chunks of rows, the gradient formed in
                   forward with torch calls), kept here as the baseline
"ours" is minilvlm.models.loss.head_cross_entropy, which runs the op. TFLOP/s counts the three GEMMs
of the labelled rows (6 N V D); "bare mm" times torch.mm on the same three shapes in the same run:
the floor that GEMMs staying GEMMs leaves.
"""
import pytest
import torch
import torch.nn.functional as F

from minilvlm.models.loss import head_cross_entropy, shifted_targets
from minilvlm.ops import linear_cross_entropy_reference
from tests.bench.common import median_ms, print_table

pytestmark = pytest.mark.bench

PROMPT = 65
CASES = [  # name, batch, tokens, D, V, rounds (fewer for the slow shapes)
    ("small llava b8 T256 D512 V8192", 8, 256, 512, 8192, 5),
    ("LLaMA-7B width b2 T256 D4096 V32000", 2, 256, 4096, 32000, 2),
    ("Qwen2 vocab b2 T256 D896 V151936", 2, 256, 896, 151936, 2),
]


class _PreviousHeadCrossEntropy(torch.autograd.Function):
    """minilvlm's loss before the op: chunks of rows, gradients formed in forward with torch calls."""

    @staticmethod
    def forward(ctx, h, weight, targets, chunk_rows):
        w = weight
        total = torch.zeros((), dtype=torch.float32)
        dh, dw = torch.empty_like(h), None
        for start in range(0, h.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            logits = F.linear(h[rows], w).float()
            tgt = targets[rows]
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, tgt[:, None]).squeeze(1)).sum()
            grad = logits.sub_(lse[:, None]).exp_()
            grad[torch.arange(grad.shape[0]), tgt] -= 1
            grad = grad.to(h.dtype)
            dh[rows] = grad @ w
            part = (grad.t() @ h[rows]).float()
            dw = part if dw is None else dw.add_(part)
        ctx.save_for_backward(dh, dw)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        dh, dw = ctx.saved_tensors
        return (dh * grad_total).to(dh.dtype), (dw * grad_total).to(ctx.weight_dtype), None, None


def ours(hidden, labels, weight, count):
    return head_cross_entropy(hidden, labels, weight, count=count)[0]


def plain(hidden, labels, weight, count):
    logits = F.linear(hidden, weight)[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, weight.shape[0]), labels[:, 1:].reshape(-1), reduction="sum")


def selected_rows(hidden, labels, weight, count):
    index, targets = shifted_targets(labels, count)
    return linear_cross_entropy_reference(hidden.reshape(-1, hidden.shape[-1]).index_select(0, index), weight, None,
                                          targets)


def previous_chunked(hidden, labels, weight, count):
    index, targets = shifted_targets(labels, count)
    flat = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
    return _PreviousHeadCrossEntropy.apply(flat, weight, targets, max(1, 16 * 1024 * 1024 // weight.shape[0]))


def make_inputs(batch, tokens, dim, vocab, dtype):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(batch, tokens, dim, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(vocab, dim, generator=g) * dim ** -0.5).to(dtype).requires_grad_()
    labels = torch.randint(0, vocab, (batch, tokens), generator=g)
    labels[:, :PROMPT] = -100
    return hidden, weight, labels, int((labels[:, 1:] != -100).sum())


def step_fn(fn, hidden, weight, labels, count):
    def step():
        hidden.grad = weight.grad = None
        (fn(hidden, labels, weight, count) / count).backward()
    return step


def bare_mm_fn(n, dim, vocab, dtype):
    g = torch.Generator().manual_seed(1)
    h, w = torch.randn(n, dim, generator=g).to(dtype), torch.randn(vocab, dim, generator=g).to(dtype)
    grad = torch.randn(n, vocab, generator=g).to(dtype)
    return lambda: (torch.mm(h, w.t()), torch.mm(grad, w), torch.mm(grad.t(), h))


def interleaved_ms(fns, rounds):
    """The best of `rounds` medians per function, the functions taking turns (outside load lands on all)."""
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], median_ms(fn, reps=3 if rounds < 5 else 5, warmup=1))
    return best


def test_linear_cross_entropy_speed():
    rows = []
    impls = [("minilvlm op", ours), ("plain", plain), ("selected rows", selected_rows),
             ("previous chunked", previous_chunked)]
    for name, batch, tokens, dim, vocab, rounds in CASES:
        for dtype in (torch.float32, torch.bfloat16):
            hidden, weight, labels, count = make_inputs(batch, tokens, dim, vocab, dtype)
            fns = [step_fn(fn, hidden, weight, labels, count) for _, fn in impls] + [bare_mm_fn(count, dim, vocab, dtype)]
            times = interleaved_ms(fns, rounds)
            best_torch, mm = min(times[1:-1]), times[-1]
            flops = 6 * count * vocab * dim
            for (label, _), ms in zip(impls + [("bare mm x3", None)], times):
                rows.append([name, str(dtype).split(".")[-1], label, f"{ms:.1f}",
                             f"{best_torch / ms:.2f}x" if label == "minilvlm op" else "",
                             f"{flops / ms / 1e9:.2f}", f"{100 * mm / ms:.0f}%"])
    print_table(f"LM-head loss forward+backward (labelled rows N = B * (T - {PROMPT})), {torch.get_num_threads()} "
                "threads", ["case", "dtype", "implementation", "median ms", "vs best torch", "TFLOP/s", "% of bare mm"],
                rows)
    assert all(float(r[3]) > 0 for r in rows)
