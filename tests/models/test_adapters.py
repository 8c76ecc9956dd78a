"""RepAdapter and MMAdapter: the fused op inside the modules, with and without dropout, LaVIN's
conv composition, and a router that learns to tell the two modalities apart."""
import pytest
import torch

from minilvlm.models import MMAdapter, ModalityToken, RepAdapter
from minilvlm.ops import mm_adapter_reference
from minilvlm.ops.mm_adapter import draw_dropout_seed, dropout_keep_mask
from tests.ops.dispatch_log import DispatchLog
from tests.models.lavin_composition import lavin_composition


def randomise(module, seed=0):
    """Zero-initialised up-projections make every adapter the identity; give them values to test against."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


def params(m):
    router = (m.router_w, m.router_b) if isinstance(m, MMAdapter) else (None, None)
    return dict(router_w=router[0], router_b=router[1], down_w=m.down_w, down_b=m.down_b, up_w=m.up_w, up_b=m.up_b)


def test_fresh_adapters_are_the_identity():
    x = torch.randn(2, 5, 32)
    assert torch.equal(RepAdapter(32).eval()(x), x)
    t = ModalityToken(32)(torch.tensor([True, False]))
    assert torch.equal(MMAdapter(32).eval()(x, t), x)


def test_mm_adapter_module_matches_reference_and_lavin_composition():
    m = randomise(MMAdapter(74, hidden=8, groups=2, scale=0.5, temperature=5.0)).eval()
    x = torch.randn(3, 7, 74)
    t = torch.randn(3, 74)
    out = m(x, t)
    ref = mm_adapter_reference(x, t, **params(m), temperature=5.0, scale=0.5, groups=2)
    lavin = lavin_composition(x, t, **params(m), temperature=5.0, scale=0.5, groups=2)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.allclose(lavin, ref, rtol=1e-5, atol=1e-5)  # the grouping convention is LaVIN's


def test_rep_adapter_is_the_single_path_op():
    m = randomise(RepAdapter(74, hidden=8, groups=2, scale=0.7)).eval()
    x = torch.randn(2, 5, 74)
    h = x @ m.down_w.t() + m.down_b
    hg = h.view(2, 5, 2, 4)
    up = torch.einsum("btgk,gdk->btgd", hg, m.up_w[0].view(2, 37, 4)).reshape(2, 5, 74) + m.up_b[0]
    assert torch.allclose(m(x), x + 0.7 * up, rtol=1e-5, atol=1e-5)


def test_gradients_through_the_module_match_reference():
    m = randomise(MMAdapter(74, dropout=0.0, temperature=10.0)).train()
    x = torch.randn(2, 6, 74, requires_grad=True)
    t = torch.randn(2, 74, requires_grad=True)
    m(x, t).square().sum().backward()
    got = [x.grad, t.grad] + [p.grad for p in m.parameters()]
    for v in [x, t, *m.parameters()]:
        v.grad = None
    mm_adapter_reference(x, t, **params(m), temperature=10.0, scale=1.0, groups=2).square().sum().backward()
    for a, b in zip(got, [x.grad, t.grad] + [p.grad for p in m.parameters()]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_training_with_dropout_runs_the_fused_op_with_its_philox_mask(dtype):
    """LaVIN's setting (dropout 0.1, training): the native op runs (not a fallback composition), its mask is
    the Philox mask of a seed drawn from torch's default generator, and that seed repeats under manual_seed."""
    m = randomise(MMAdapter(32, dropout=0.1)).train()
    x, t = torch.randn(2, 9, 32).to(dtype), torch.randn(2, 32).to(dtype)
    torch.manual_seed(7)
    with DispatchLog() as log:
        out = m(x, t)
    assert log.ran("minilvlm.mm_adapter.default") and not log.ran("aten.native_dropout")
    torch.manual_seed(7)
    seed = draw_dropout_seed()
    keep = dropout_keep_mask(seed, 0, (2, 9, 8), 0.1)
    assert 0 < int(keep.sum()) < keep.numel()
    cast = {k: v.to(dtype) for k, v in params(m).items()}
    expected = mm_adapter_reference(x, t.to(dtype), **cast, temperature=10.0, scale=1.0, groups=2, dropout=0.1,
                                    dropout_mask=keep)
    exact = mm_adapter_reference(x.double(), t.double(), **{k: v.double() for k, v in params(m).items()},
                                 temperature=10.0, scale=1.0, groups=2, dropout=0.1, dropout_mask=keep)
    error = (out.double() - exact).abs().max().item()
    if dtype == torch.float32:
        assert error <= 1e-5 * exact.abs().max().item()
    else:  # the 2x rule: at most twice the error of the plain-PyTorch bf16 computation
        assert error <= 2 * (expected.double() - exact).abs().max().item()
    torch.manual_seed(7)
    assert torch.equal(m(x, t), out)  # same generator state, same mask
    assert not torch.allclose(out.float(), m.eval()(x, t).float())  # dropout was active


def test_bfloat16_tokens_with_float32_parameters_in_both_modes():
    m = randomise(MMAdapter(32, dropout=0.1))
    x, t = torch.randn(2, 5, 32).bfloat16(), torch.randn(2, 32).bfloat16()
    assert m.eval()(x, t).dtype == torch.bfloat16
    assert m.train()(x, t).dtype == torch.bfloat16


def test_bad_groups_raise_a_clear_error():
    with pytest.raises(ValueError, match="groups=3 must divide dim=32 and hidden=8"):
        MMAdapter(32, groups=3)


def test_router_learns_to_separate_text_only_from_image_samples():
    """Toy task: image samples need one shift of their features, text-only samples another. After a
    few steps of training the router sends the two modalities along different paths."""
    torch.manual_seed(0)
    dim, batch = 32, 8
    token = ModalityToken(dim)
    adapter = MMAdapter(dim, hidden=8, groups=2, dropout=0.0, temperature=10.0)
    has_image = torch.arange(batch) % 2 == 0
    shift = torch.stack([torch.randn(dim), torch.randn(dim)])  # text-only, image

    def weights():
        with torch.no_grad():
            w = adapter.routing_weights(token(has_image))
        return w[has_image].mean(0), w[~has_image].mean(0)

    w_image, w_text = weights()
    assert (w_image - w_text).abs().max() < 0.1, "the modalities start out routed alike"
    opt = torch.optim.Adam(list(adapter.parameters()) + list(token.parameters()), lr=0.05)
    first_loss = None
    for _ in range(60):
        x = torch.randn(batch, 4, dim)
        target = x + shift[has_image.long()][:, None, :]
        loss = (adapter(x, token(has_image)) - target).square().mean()
        first_loss = loss.item() if first_loss is None else first_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    w_image, w_text = weights()
    assert loss.item() < 0.2 * first_loss
    assert (w_image - w_text).abs().max() > 0.3, (w_image, w_text)
