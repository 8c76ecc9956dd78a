import pytest
import torch
import torch.nn.functional as F

from minilvlm.models.decoder import Decoder, DecoderConfig
from minilvlm.models.layers import causal_mask
from minilvlm.models.loss import head_cross_entropy, shifted_targets


def plain_loss(hidden, labels, weight, bias):
    logits = F.linear(hidden, weight, bias)[:, :-1]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits.reshape(-1, weight.shape[0]), labels[:, 1:].reshape(-1), ignore_index=-100,
                           reduction="sum")


def inputs(dtype, bias, B=3, T=17, D=24, V=101, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, D, generator=g, dtype=dtype).requires_grad_()
    weight = torch.randn(V, D, generator=g, dtype=dtype).requires_grad_()
    b = torch.randn(V, generator=g, dtype=dtype).requires_grad_() if bias else None
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :5] = -100
    labels[2, -3:] = -100
    return hidden, labels, weight, b


def grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk_rows", [None, 1, 7])
def test_matches_plain_cross_entropy_fp64(bias, chunk_rows):
    hidden, labels, weight, b = inputs(torch.float64, bias)
    total, count = head_cross_entropy(hidden, labels, weight, b, chunk_rows=chunk_rows)
    reference = plain_loss(hidden, labels, weight, b)
    assert count == int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(total, reference, rtol=1e-12, atol=0)
    for ours, theirs in zip(grads(0.7 * total, (hidden, weight, b)), grads(0.7 * reference, (hidden, weight, b))):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_gradcheck():
    hidden, labels, weight, b = inputs(torch.float64, True, B=3, T=6, D=5, V=11)
    assert torch.autograd.gradcheck(lambda h, w, bb: head_cross_entropy(h, labels, w, bb, chunk_rows=3)[0],
                                    (hidden, weight, b))


def test_fp32_and_bf16_autocast_against_fp64():
    hidden, labels, weight, b = inputs(torch.float64, False, B=4, T=33, D=64, V=257)
    exact = plain_loss(hidden, labels, weight, b)
    exact_grads = grads(exact, (hidden, weight))
    h32, w32 = hidden.detach().float().requires_grad_(), weight.detach().float().requires_grad_()
    total, _ = head_cross_entropy(h32, labels, w32)
    assert total.dtype == torch.float32
    torch.testing.assert_close(total.double(), exact, rtol=1e-6, atol=0)
    for ours, theirs in zip(grads(total, (h32, w32)), exact_grads):
        torch.testing.assert_close(ours.double(), theirs, rtol=1e-5, atol=1e-5)
    # bf16 autocast: at most twice the error of the plain form under the same autocast.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = head_cross_entropy(h32, labels, w32)[0]
        plain = plain_loss(h32, labels, w32, None)
    ours_grads, plain_grads = grads(ours, (h32, w32)), grads(plain, (h32, w32))
    ours_v, plain_v, exact_v = float(ours.detach()), float(plain.detach()), float(exact.detach())
    assert abs(ours_v - exact_v) <= 2 * abs(plain_v - exact_v) + 1e-3 * abs(exact_v)
    for o, p, e in zip(ours_grads, plain_grads, exact_grads):
        assert o.dtype == torch.float32
        assert (o.double() - e).abs().max() <= 2 * (p.double() - e).abs().max() + 1e-6


def test_no_grad_gives_the_loss_alone():
    hidden, labels, weight, b = inputs(torch.float64, True)
    with torch.no_grad():
        total, count = head_cross_entropy(hidden, labels, weight, b)
    assert not total.requires_grad
    torch.testing.assert_close(total, plain_loss(hidden, labels, weight, b).detach(), rtol=1e-12, atol=0)


def test_all_ignored_is_zero_with_zero_count():
    hidden, labels, weight, b = inputs(torch.float64, False)
    total, count = head_cross_entropy(hidden, torch.full_like(labels, -100), weight, b)
    assert count == 0 and float(total.detach()) == 0.0


def test_bad_labels_are_clear_errors():
    hidden, labels, weight, b = inputs(torch.float32, False)
    labels[1, 4] = 101
    with pytest.raises(ValueError, match=r"label ids \[101\] lie outside the vocabulary of 101"):
        head_cross_entropy(hidden, labels, weight)
    with pytest.raises(ValueError, match="do not match the hidden states"):
        head_cross_entropy(hidden, labels[:, :-1], weight)


@pytest.mark.parametrize("tied", [False, True])
def test_decoder_loss_equals_cross_entropy_of_its_logits(tied):
    torch.manual_seed(0)
    lm = Decoder(DecoderConfig(vocab_size=53, dim=32, n_layers=2, n_heads=4, mlp_dim=48, tie_embeddings=tied,
                               max_seq_len=16)).double()
    ids = torch.randint(0, 53, (2, 11))
    labels = ids.masked_fill(torch.rand(2, 11) < 0.3, -100)
    total, count = lm.loss(lm(ids, head=False), labels)
    reference = F.cross_entropy(lm(ids)[:, :-1].reshape(-1, 53), labels[:, 1:].reshape(-1), reduction="sum")
    torch.testing.assert_close(total, reference, rtol=1e-12, atol=0)
    ours = torch.autograd.grad(total, list(lm.parameters()))
    theirs = torch.autograd.grad(reference, list(lm.parameters()))
    for o, t in zip(ours, theirs):
        torch.testing.assert_close(o, t, rtol=1e-10, atol=1e-12)


# ---- the causal-only attention path for right-padded batches ------------------------------------

def test_plain_causal_only_without_a_mask_and_never_by_reading_the_data():
    assert causal_mask(None, 4, 4, "cpu") is None
    # A mask or segments always give a mask: whether a batch is right-padded is the caller's fact
    # (the collator's `packed`), not something the decoder reads back from the device.
    real = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert causal_mask(real, 4, 4, "cpu") is not None
    assert causal_mask(None, 4, 4, "cpu", segment_ids=real) is not None
    assert causal_mask(torch.tensor([[1, 1, 1, 1]]), 1, 4, "cpu") is not None
    meta = torch.ones(2, 4, dtype=torch.long, device="meta")   # holds no values: nothing may be read
    assert causal_mask(meta, 4, 4, "meta").shape == (2, 1, 4, 4)


def test_right_padded_logits_equal_the_masked_ones():
    torch.manual_seed(0)
    lm = Decoder(DecoderConfig(vocab_size=40, dim=32, n_layers=2, n_heads=4, mlp_dim=48, max_seq_len=16))
    ids = torch.randint(0, 40, (3, 9))
    real = torch.ones(3, 9, dtype=torch.long)
    real[0, 6:] = 0
    real[2, 3:] = 0
    fast = lm(ids)
    explicit = lm(ids, _full_mask(real))
    keep = real.bool()
    torch.testing.assert_close(fast[keep], explicit[keep], rtol=1e-5, atol=1e-6)


def test_the_static_size_target_selection_equals_the_boolean_one():
    labels = torch.tensor([[5, -100, 7, 8, -100], [-100, 3, -100, -100, 9]])
    index, targets = shifted_targets(labels)
    count = int((labels[:, 1:] != -100).sum())
    static_index, static_targets = shifted_targets(labels, count)
    assert torch.equal(index, static_index) and torch.equal(targets, static_targets)
    meta_index, _ = shifted_targets(labels.to("meta"), count)
    assert meta_index.shape == (count,)


def _full_mask(real):
    """The boolean [B, 1, T, T] mask the right-padded batch would get without the shortcut."""
    t = real.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    return (causal[None, None] & real.bool()[:, None, None, :]) | torch.eye(t, dtype=torch.bool)[None, None]
