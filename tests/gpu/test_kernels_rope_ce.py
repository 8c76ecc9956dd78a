"""rope_ and linear_cross_entropy on a real GPU at LLaMA-7B shapes (32 heads of 128, D 4096, vocab
32000) against their references run on the same GPU, under the numerics rules of docs/design.md.
Skipped here (no CUDA device); run by tools/gpu_check.sh."""
import pytest
import torch

from minilvlm.models.loss import head_cross_entropy, shifted_targets
from minilvlm.ops import linear_cross_entropy_reference, rope_, rope_reference, rope_tables

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

LOW = (torch.bfloat16, torch.float16)


def rel_err(actual, expected):
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def check(ours, exact, plain, dtype):
    """fp32: 1e-5 of the reference; bf16/fp16: at most twice the reference's own low-precision error."""
    if dtype == torch.float32:
        assert rel_err(ours, exact) <= 1e-5, rel_err(ours, exact)
    else:
        assert rel_err(ours, exact) <= 2 * rel_err(plain, exact) + 1e-6, (rel_err(ours, exact), rel_err(plain, exact))


def left_padded_positions(batch, tokens, device):
    """Each row's positions count from its first real token (left padding), as generation passes them."""
    pads = torch.arange(batch, device=device)[:, None] * 37
    return (torch.arange(tokens, device=device)[None, :] - pads).clamp_min(0)


@pytest.mark.parametrize("dtype", [torch.float32, *LOW])
@pytest.mark.parametrize("tokens,head_dim,rotary_dim", [(512, 128, 128), (1, 128, 128), (512, 80, 32)])
def test_rope_at_llama_7b_width(dtype, tokens, head_dim, rotary_dim):
    g = torch.Generator(device="cuda").manual_seed(0)
    batch, heads, kv_heads = 4, 32, 8
    q = torch.randn(batch, tokens, heads, head_dim, device="cuda", generator=g).to(dtype).transpose(1, 2)
    k = torch.randn(batch, tokens, kv_heads, head_dim, device="cuda", generator=g).to(dtype).transpose(1, 2)
    positions = left_padded_positions(batch, tokens, "cuda") + (300 if tokens == 1 else 0)  # a decode step
    cos, sin = rope_tables(positions, rotary_dim, 10000.0)
    q2, k2 = q.clone(), k.clone()
    torch.ops.minilvlm.rope_(q2, k2, cos, sin)
    for ours, x in ((q2, q), (k2, k)):
        check(ours, rope_reference(x.float(), cos, sin), rope_reference(x, cos.to(dtype), sin.to(dtype)), dtype)
        assert torch.equal(ours[..., rotary_dim:], x[..., rotary_dim:])
    grad = torch.randn(q.shape, device="cuda", generator=g).to(dtype)
    back = torch.ops.minilvlm.rope_backward(grad, cos, sin)
    check(back, rope_reference(grad.float(), cos, sin, True), rope_reference(grad, cos.to(dtype), sin.to(dtype), True),
          dtype)


def test_rope_autograd_on_the_gpu():
    g = torch.Generator(device="cuda").manual_seed(1)
    leaf = torch.randn(2, 64, 32, 128, device="cuda", generator=g, requires_grad=True)
    cos, sin = rope_tables(left_padded_positions(2, 64, "cuda"), 128, 10000.0)
    grad = torch.randn(2, 32, 64, 128, device="cuda", generator=g)
    q = (leaf * 1).transpose(1, 2)
    rope_(q, None, cos, sin)
    q.backward(grad)
    expected = rope_reference(grad, cos, sin, inverse=True).transpose(1, 2)
    assert rel_err(leaf.grad, expected) <= 1e-5


@pytest.mark.parametrize("compute", [torch.float32, *LOW])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_cross_entropy_at_llama_7b_width(compute, with_bias):
    g = torch.Generator(device="cuda").manual_seed(2)
    n, d, v = 1000, 4096, 32000
    hidden = torch.randn(n, d, device="cuda", generator=g)
    weight = torch.randn(v, d, device="cuda", generator=g) * d ** -0.5 * 2
    bias = torch.randn(v, device="cuda", generator=g) if with_bias else None
    targets = torch.randint(0, v, (n,), device="cuda", generator=g)
    ours = torch.ops.minilvlm.linear_cross_entropy(hidden, weight, bias, targets, compute, 300, [True, True, True])
    results = []
    for dtype in (torch.float32, compute):
        leaves = [None if t is None else t.clone().requires_grad_() for t in (hidden, weight, bias)]
        loss = linear_cross_entropy_reference(*leaves, targets, compute_dtype=dtype)
        loss.backward()
        results.append([loss.detach()] + [None if t is None else t.grad for t in leaves])
    exact, plain = results
    for i, mine in enumerate(ours):
        if exact[i] is not None:
            check(mine, exact[i], plain[i], compute)


@pytest.mark.parametrize("chunk_rows", [300, 1000])
def test_linear_cross_entropy_pure_bf16_gives_grad_weight_in_bf16(chunk_rows):
    """bf16 parameters: grad_weight in bf16, written by the GEMM (one chunk) or rounded once from the fp32 sum."""
    g = torch.Generator(device="cuda").manual_seed(4)
    n, d, v = 1000, 4096, 32000
    hidden = torch.randn(n, d, device="cuda", generator=g)
    weight = torch.randn(v, d, device="cuda", generator=g) * d ** -0.5 * 2
    targets = torch.randint(0, v, (n,), device="cuda", generator=g)
    ours = torch.ops.minilvlm.linear_cross_entropy(hidden.bfloat16(), weight.bfloat16(), None, targets,
                                                   torch.bfloat16, chunk_rows, [True, True, False])
    assert ours[1].dtype == ours[2].dtype == torch.bfloat16
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        leaves = [t.clone().to(dtype).requires_grad_() for t in (hidden, weight)]
        linear_cross_entropy_reference(*leaves, None, targets).backward()
        results.append([leaves[0].grad, leaves[1].grad])
    for mine, exact, plain in zip(ours[1:3], *results):
        check(mine, exact, plain, torch.bfloat16)


def test_head_cross_entropy_under_cuda_autocast():
    g = torch.Generator(device="cuda").manual_seed(3)
    hidden = torch.randn(2, 512, 4096, device="cuda", generator=g, requires_grad=True)
    weight = (torch.randn(32000, 4096, device="cuda", generator=g) * 0.03).requires_grad_()
    labels = torch.randint(0, 32000, (2, 512), device="cuda", generator=g)
    labels[:, :100] = -100
    count = int((labels[:, 1:] != -100).sum())
    with torch.autocast("cuda", dtype=torch.bfloat16):
        total, n = head_cross_entropy(hidden, labels, weight, count=count)
    assert n == count and total.dtype == torch.float32
    total.backward()
    assert hidden.grad.dtype == weight.grad.dtype == torch.float32
    index, targets = shifted_targets(labels, count)
    with torch.no_grad():
        flat = hidden.reshape(-1, 4096).index_select(0, index)
        exact = linear_cross_entropy_reference(flat, weight, None, targets)
        plain = linear_cross_entropy_reference(flat, weight, None, targets, compute_dtype=torch.bfloat16)
    check(total.detach(), exact, plain, torch.bfloat16)
