"""RMSNorm and RoPE with hand-written backwards, against the plain compositions they replace."""
import pytest
import torch

from minilvlm.models.layers import RMSNorm, rope_cos_sin
from minilvlm.ops import rope_


def plain_rms_norm(x, weight, eps):
    x32 = x.to(torch.promote_types(x.dtype, torch.float32))
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def plain_rope(x, cos, sin):
    """transformers' rotate-half composition, on the full-width [B, T, d] tables it builds."""
    cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
    d = cos.shape[-1]
    rot, rest = x[..., :d], x[..., d:]
    cos, sin = cos[:, None], sin[:, None]
    rotated = torch.cat((-rot[..., d // 2:], rot[..., : d // 2]), dim=-1)
    return torch.cat((rot * cos + rotated * sin, rest), dim=-1)


def test_rms_norm_gradcheck():
    norm = RMSNorm(7, eps=1e-5).double()
    norm.weight.data.normal_()
    x = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    weight = norm.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t, w: torch.func.functional_call(norm, {"weight": w}, (t,)), (x, weight))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_the_composition(dtype):
    torch.manual_seed(0)
    x = (torch.randn(4, 9, 33) * 3).to(dtype).requires_grad_()
    weight = torch.randn(33, requires_grad=True)
    norm = RMSNorm(33, eps=1e-6)
    norm.weight = torch.nn.Parameter(weight.detach().clone())
    ours, plain = norm(x), plain_rms_norm(x, weight, 1e-6)
    assert ours.dtype == plain.dtype
    torch.testing.assert_close(ours, plain, rtol=1e-6, atol=1e-6)
    grad = torch.randn_like(ours)
    dx, dw = torch.autograd.grad(ours, (x, norm.weight), grad)
    px, pw = torch.autograd.grad(plain, (x, weight), grad)
    assert dx.dtype == dtype and dw.dtype == torch.float32
    # bf16: both round dx once to bf16 from fp32 values that differ only in summation order.
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=3.2e-2)
    torch.testing.assert_close(dx, px, **tol)
    torch.testing.assert_close(dw, pw, rtol=1e-5, atol=1e-5)



def apply_rope(x, cos, sin):
    """x [B, H, T, hd] rotated in place by the rope op; returns x."""
    return rope_(x, None, cos, sin)[0]

@pytest.mark.parametrize("head_dim, rotary_dim", [(8, 8), (10, 4), (12, 6), (9, 6)])
def test_rope_matches_the_composition_and_gradcheck(head_dim, rotary_dim):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, head_dim, dtype=torch.float64, requires_grad=True)
    cos, sin = rope_cos_sin(torch.randint(0, 50, (2, 5)), rotary_dim, 10000.0, torch.float64)
    assert cos.shape == sin.shape == (2, 5, rotary_dim // 2)
    rotated = x.clone()  # apply_rope rotates in place (a leaf that requires grad cannot be)
    assert apply_rope(rotated, cos, sin) is rotated
    torch.testing.assert_close(rotated, plain_rope(x, cos, sin), rtol=1e-14, atol=1e-14)
    assert torch.autograd.gradcheck(lambda t: apply_rope(t.clone(), cos, sin), (x,))
    with torch.no_grad():  # the no-grad path (generation) computes the same rotation
        torch.testing.assert_close(apply_rope(x.clone(), cos, sin), plain_rope(x, cos, sin), rtol=1e-14, atol=1e-14)


def test_rope_on_bf16_queries_rotates_in_fp32_and_rounds_once():
    x = torch.randn(2, 4, 6, 8).bfloat16()
    leaf = x.clone().requires_grad_()
    q = leaf * 1  # a projection's output, as in the decoder
    cos, sin = rope_cos_sin(torch.arange(6).expand(2, 6), 8, 10000.0, torch.bfloat16)
    assert cos.dtype == sin.dtype == torch.float32
    x32 = x.float().requires_grad_()
    plain = plain_rope(x32, cos, sin)
    ours = apply_rope(q, cos, sin)
    assert ours is q and ours.dtype == torch.bfloat16
    assert torch.equal(ours, plain.bfloat16())  # the fp32 composition, rounded once
    grad = torch.randn_like(ours)
    ours.backward(grad)
    plain.backward(grad.float())
    assert leaf.grad.dtype == torch.bfloat16
    assert torch.equal(leaf.grad, x32.grad.bfloat16())
