"""Our models against `transformers` on tiny random checkpoints saved as sharded safetensors."""
import json

import pytest
import torch

from minilvlm.models import Decoder, VisionTransformer
from minilvlm.weights import from_pretrained
from tests.models import hf_fixtures

TOL = 1e-4


def _check_sharded(folder):
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # the index path is really exercised


@pytest.mark.parametrize("make", [hf_fixtures.llama, hf_fixtures.qwen2, hf_fixtures.phi],
                         ids=["llama-gqa", "qwen2", "phi"])
def test_decoder_logits_match_transformers(tmp_path, make):
    ref = make(tmp_path)
    _check_sharded(tmp_path)
    ours = from_pretrained(tmp_path)
    assert isinstance(ours, Decoder)
    torch.manual_seed(0)
    ids = torch.randint(0, ref.config.vocab_size, (2, 13))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding on the second row
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        logits, hidden = ours(ids, mask, output_hidden_states=True)
    valid = mask.bool()
    assert logits.shape == expected.logits.shape
    assert (logits - expected.logits)[valid].abs().max() < TOL
    assert len(hidden) == len(expected.hidden_states)
    for a, b in zip(hidden, expected.hidden_states):
        assert (a - b)[valid].abs().max() < TOL


@pytest.mark.parametrize("make", [hf_fixtures.clip_vision, hf_fixtures.siglip_vision], ids=["clip", "siglip"])
def test_vision_hidden_states_match_transformers(tmp_path, make):
    ref = make(tmp_path)
    _check_sharded(tmp_path)
    ours = from_pretrained(tmp_path)
    assert isinstance(ours, VisionTransformer)
    size = ref.config.image_size
    pixels = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = ref(pixel_values=pixels, output_hidden_states=True)
        last = ours(pixels)
        states = ours(pixels, output_hidden_states=True)
    assert last.shape == expected.last_hidden_state.shape
    assert (last - expected.last_hidden_state).abs().max() < TOL
    assert len(states) == len(expected.hidden_states) == ref.config.num_hidden_layers + 1
    for a, b in zip(states, expected.hidden_states):
        assert (a - b).abs().max() < TOL
    assert torch.equal(states.last_hidden_state, last)
    if ours.config.class_token:
        assert (ours.pooled(last) - expected.pooler_output).abs().max() < TOL


def test_vision_chosen_layers(tmp_path):
    hf_fixtures.clip_vision(tmp_path)
    ours = from_pretrained(tmp_path)
    pixels = torch.randn(1, 3, 30, 30)
    with torch.no_grad():
        states = ours(pixels, output_hidden_states=True)
        penultimate, first, every_2nd = ours.forward_features(pixels, layers=[-2, 1, 2])
    assert torch.equal(penultimate, states[-2]) and torch.equal(first, states[1]) and torch.equal(every_2nd, states[2])
    with pytest.raises(ValueError, match="out of range"):
        ours.forward_features(pixels, layers=[4])


def test_full_clip_checkpoint_loads_the_vision_tower(tmp_path):
    transformers = hf_fixtures.transformers
    cfg = transformers.CLIPConfig(
        vision_config=dict(image_size=30, patch_size=6, hidden_size=48, intermediate_size=72, num_hidden_layers=2,
                           num_attention_heads=4),
        text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=40, num_hidden_layers=1, num_attention_heads=2))
    full = transformers.CLIPModel(cfg).eval()
    full.save_pretrained(tmp_path, safe_serialization=True)
    ours = from_pretrained(tmp_path)
    pixels = torch.randn(1, 3, 30, 30)
    with torch.no_grad():
        expected = full.vision_model(pixel_values=pixels).last_hidden_state
        assert (ours(pixels) - expected).abs().max() < TOL


def test_dtype_cast_on_request(tmp_path):
    hf_fixtures.llama(tmp_path)
    ours = from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in ours.parameters())
