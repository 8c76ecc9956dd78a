"""The decoder on its own: cache, padding, packing, activation checkpointing, configs."""
import pytest
import torch

from minilvlm.models import Decoder, DecoderConfig

TINY = dict(vocab_size=101, dim=48, n_layers=2, n_heads=4, mlp_dim=80)
VARIANTS = {
    "llama-gqa": DecoderConfig(**TINY, n_kv_heads=2),
    "qwen2": DecoderConfig(**TINY, n_kv_heads=2, qkv_bias=True, tie_embeddings=True),
    "phi": DecoderConfig(**TINY, mlp="plain", act="gelu_tanh", norm="layer", parallel_block=True, rotary_fraction=0.4,
                         qkv_bias=True, out_bias=True, mlp_bias=True, lm_head_bias=True, qk_norm=True),
}


def _model(name):
    torch.manual_seed(0)
    return Decoder(VARIANTS[name]).eval()


@pytest.mark.parametrize("name", VARIANTS)
def test_cache_gives_the_same_logits_as_one_pass(name):
    model = _model(name)
    ids = torch.randint(0, 101, (2, 11))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2, 16)
        parts = [model(ids[:, :6], cache=cache), model(ids[:, 6:9], cache=cache), model(ids[:, 9:], cache=cache)]
    assert cache.length == 11
    assert (torch.cat(parts, dim=1) - full).abs().max() < 1e-5


def test_cache_overflow_is_an_error():
    model = _model("llama-gqa")
    cache = model.new_cache(1, 4)
    with torch.no_grad(), pytest.raises(ValueError, match="KV cache holds 4 positions; 6 needed"):
        model(torch.zeros(1, 6, dtype=torch.long), cache=cache)


@pytest.mark.parametrize("name", VARIANTS)
def test_packed_sequences_match_separate_runs(name):
    model = _model(name)
    a, b = torch.randint(0, 101, (1, 7)), torch.randint(0, 101, (1, 5))
    packed = torch.cat((a, b), dim=1)
    segments = torch.tensor([[0] * 7 + [1] * 5])
    positions = torch.tensor([list(range(7)) + list(range(5))])
    with torch.no_grad():
        together = model(packed, position_ids=positions, segment_ids=segments)
        apart = torch.cat((model(a), model(b)), dim=1)
    # fp32 rounding only (the GEMMs block 12 rows differently from 7 and 5): relative to the logits'
    # scale (up to ~60 here); a mask or position bug moves logits by O(1).
    assert (together - apart).abs().max() < 1e-6 * apart.abs().max()


def test_left_padding_with_positions_matches_unpadded():
    model = _model("llama-gqa")
    ids = torch.randint(1, 101, (1, 6))
    padded = torch.cat((torch.zeros(1, 3, dtype=torch.long), ids), dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(padded, mask, position_ids=positions)
        assert not out.isnan().any()
        assert (out[:, 3:] - model(ids)).abs().max() < 1e-5


def test_mask_must_cover_cached_positions():
    model = _model("llama-gqa")
    cache = model.new_cache(1, 8)
    with torch.no_grad():
        model(torch.ones(1, 3, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="attention_mask covers 1 positions, but the keys span 4"):
            model(torch.ones(1, 1, dtype=torch.long), torch.ones(1, 1), cache=cache)


@pytest.mark.parametrize("name", ["llama-gqa", "phi"])
def test_activation_checkpointing_gives_the_same_gradients(name):
    model = _model(name).train()
    ids = torch.randint(0, 101, (2, 9))
    grads = []
    for checkpointing in (False, True):
        model.activation_checkpointing = checkpointing
        model.zero_grad()
        model(ids).float().logsumexp(-1).mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for g0, g1 in zip(*grads):
        assert torch.allclose(g0, g1, atol=1e-6)


def test_inputs_embeds_equals_input_ids():
    model = _model("qwen2")
    ids = torch.randint(0, 101, (2, 5))
    with torch.no_grad():
        assert torch.equal(model(ids), model(inputs_embeds=model.embed(ids)))
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model()


def test_config_errors():
    with pytest.raises(ValueError, match="unknown decoder preset 'llama-70b'"):
        DecoderConfig.preset("llama-70b")
    with pytest.raises(ValueError, match="n_heads=6 is not a multiple of n_kv_heads=4"):
        DecoderConfig(n_heads=6, n_kv_heads=4)
    assert DecoderConfig.preset("phi-2", n_layers=2).rotary_dim == 32


@pytest.mark.parametrize("name", VARIANTS)
def test_unmasked_causal_path_equals_an_all_ones_mask(name):
    model = _model(name)
    ids = torch.randint(0, 101, (2, 10))
    with torch.no_grad():
        assert (model(ids) - model(ids, torch.ones_like(ids))).abs().max() < 1e-5
