"""minilvlm.weights: every way a checkpoint can fail to fit, and parameter counts of the paper configs."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from minilvlm.models import Decoder, DecoderConfig, VisionConfig, VisionTransformer
from minilvlm.weights import from_pretrained
from minilvlm.weights import WeightsError, hf_key, read_config, to_hf_state_dict
from tests.models import hf_fixtures


@pytest.fixture
def llama_folder(tmp_path):
    model = hf_fixtures.transformers.LlamaForCausalLM(hf_fixtures.transformers.LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2))
    model.save_pretrained(tmp_path, safe_serialization=True)  # one file
    return tmp_path


def _rewrite(folder, edit):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_missing_key_is_named(llama_folder):
    _rewrite(llama_folder, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(WeightsError, match=r"missing: model\.layers\.1\.mlp\.up_proj\.weight"):
        from_pretrained(llama_folder)


def test_extra_key_is_named(llama_folder):
    _rewrite(llama_folder, lambda t: t.update({"model.layers.0.mystery.weight": torch.zeros(3)}))
    with pytest.raises(WeightsError, match=r"unexpected: model\.layers\.0\.mystery\.weight"):
        from_pretrained(llama_folder)


def test_wrong_shape_is_named(llama_folder):
    _rewrite(llama_folder, lambda t: t.update({"model.norm.weight": torch.ones(31)}))
    with pytest.raises(WeightsError, match=r"wrong shape: model\.norm\.weight is \[31\], the model expects \[32\]"):
        from_pretrained(llama_folder)


def test_all_problems_in_one_error(llama_folder):
    def edit(t):
        t.pop("model.embed_tokens.weight")
        t["extra.bias"] = torch.zeros(2)
        t["lm_head.weight"] = torch.zeros(5, 32)
    _rewrite(llama_folder, edit)
    with pytest.raises(WeightsError) as info:
        from_pretrained(llama_folder)
    text = str(info.value)
    assert "3 problems" in text
    assert "missing: model.embed_tokens.weight" in text and "unexpected: extra.bias" in text
    assert "wrong shape: lm_head.weight" in text


def test_truncated_file_names_the_file(llama_folder):
    path = llama_folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(WeightsError, match=r"model\.safetensors: not a readable safetensors file.*truncated"):
        from_pretrained(llama_folder)


def test_corrupt_header_names_the_file(llama_folder):
    path = llama_folder / "model.safetensors"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(WeightsError, match="model.safetensors: not a readable safetensors file"):
        from_pretrained(llama_folder)


def test_truncated_shard_names_the_shard(tmp_path):
    hf_fixtures.llama(tmp_path)
    shard = sorted(tmp_path.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-8])
    with pytest.raises(WeightsError, match=shard.name):
        from_pretrained(tmp_path)


def test_missing_shard_file(tmp_path):
    hf_fixtures.llama(tmp_path)
    shard = sorted(tmp_path.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(WeightsError, match=f"shard files that are not in .*{shard.name}"):
        from_pretrained(tmp_path)


def test_unknown_model_type(llama_folder):
    cfg = json.loads((llama_folder / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (llama_folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match=r"model_type 'mamba' is not supported; supported: .*'llama'"):
        from_pretrained(llama_folder)


def test_pickled_weights_are_refused(tmp_path, llama_folder):
    (llama_folder / "model.safetensors").rename(llama_folder / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="pickled weights are never loaded"):
        from_pretrained(llama_folder)


def test_unsupported_rope_scaling(llama_folder):
    cfg = json.loads((llama_folder / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    (llama_folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="rope_scaling .* is not supported"):
        read_config(llama_folder)


def test_weights_are_memory_mapped_not_copied(llama_folder):
    model = from_pretrained(llama_folder, dtype=None)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    # The parameters are views of the mapped file: it stays in this process's memory map while they live.
    path = str((llama_folder / "model.safetensors").resolve())
    with open("/proc/self/maps") as maps:
        assert path in maps.read()
    # The mapping is private: training may update the weights in place without touching the file.
    before = (llama_folder / "model.safetensors").read_bytes()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    del model
    assert (llama_folder / "model.safetensors").read_bytes() == before


def test_cast_reads_the_same_values(llama_folder):
    exact = from_pretrained(llama_folder)
    cast = from_pretrained(llama_folder, dtype=torch.bfloat16)
    for (name, a), (_, b) in zip(exact.named_parameters(), cast.named_parameters()):
        assert b.dtype == torch.bfloat16 and torch.equal(a.to(torch.bfloat16), b), name
    back = from_pretrained(llama_folder, dtype=torch.float64)
    assert torch.equal(back.embed.weight, exact.embed.weight.double())


def test_tied_embeddings_have_no_head(tmp_path):
    ref = hf_fixtures.qwen2(tmp_path, tie_word_embeddings=True)
    ours = from_pretrained(tmp_path)
    assert ours.lm_head is None
    ids = torch.randint(0, 151, (1, 7))
    with torch.no_grad():
        assert (ours(ids) - ref(ids).logits).abs().max() < 1e-4


def test_key_map_templates():
    from minilvlm.weights import _LLAMA_KEYS, _PHI_KEYS, _VIT_KEYS
    assert hf_key("layers.12.attn.wq.bias", _LLAMA_KEYS) == "model.layers.12.self_attn.q_proj.bias"
    assert hf_key("layers.3.attn.wo.weight", _PHI_KEYS) == "model.layers.3.self_attn.dense.weight"
    assert hf_key("cls_token", _VIT_KEYS) == "vision_model.embeddings.class_embedding"
    with pytest.raises(KeyError, match="no checkpoint name"):
        hf_key("layers.0.surprise.weight", _LLAMA_KEYS)


def _count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("preset, published", [("llama-7b", 6.74e9), ("phi-2", 2.78e9)])
def test_paper_parameter_counts_on_meta(preset, published):
    with torch.device("meta"):
        model = Decoder(DecoderConfig.preset(preset))
    assert all(p.is_meta for p in model.parameters())
    assert abs(_count(model) - published) / published < 0.01


def test_vision_preset_parameter_count_on_meta():
    with torch.device("meta"):
        model = VisionTransformer(VisionConfig.preset("clip-vit-l-14-336"))
    assert abs(_count(model) - 303.5e6) / 303.5e6 < 0.01  # CLIP ViT-L/14-336's vision tower


@pytest.mark.parametrize("make, model_type", [(hf_fixtures.phi, "phi"), (hf_fixtures.siglip_vision, "siglip_vision_model")])
def test_export_round_trips_into_transformers(tmp_path, make, model_type):
    ref = make(tmp_path)
    ours = from_pretrained(tmp_path)
    exported = to_hf_state_dict(ours, model_type)
    fresh = type(ref)(ref.config).eval()
    result = fresh.load_state_dict(exported, strict=False)
    assert not result.unexpected_keys
    # Only SigLIP's attention-pooling head, which we do not load, is left at its fresh init.
    assert all(k.startswith("vision_model.head.") for k in result.missing_keys)
    for name in exported:
        assert torch.equal(fresh.state_dict()[name], ref.state_dict()[name]), name


def test_minilvlm_never_imports_transformers():
    code = ("import sys, minilvlm.models, minilvlm.weights, minilvlm.data.templates, minilvlm.eval.generate; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_larger_vocabulary_grows_by_mean_rows_bias_included(tmp_path):
    hf = hf_fixtures.phi(tmp_path)   # 173 rows, an lm_head with a bias
    grown = from_pretrained(tmp_path, vocab_size=175)
    assert grown.config.vocab_size == 175 and grown.embed.weight.shape == (175, 64)
    for ours, theirs in ((grown.embed.weight, hf.model.embed_tokens.weight), (grown.lm_head.weight, hf.lm_head.weight),
                         (grown.lm_head.bias, hf.lm_head.bias)):
        assert torch.equal(ours[:173], theirs)
        torch.testing.assert_close(ours[173:], theirs.double().mean(0).float().expand_as(ours[173:]))
    assert from_pretrained(tmp_path, vocab_size=100).config.vocab_size == 173   # never fewer rows
    ids = torch.tensor([[3, 9, 27]])
    with torch.no_grad():
        torch.testing.assert_close(grown(ids)[..., :173], hf(ids).logits, rtol=1e-5, atol=1e-5)


def test_a_bad_preprocessor_config_is_named(tmp_path):
    hf_fixtures.clip_vision(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5], "image_std": 0.5}))
    with pytest.raises(WeightsError, match="image_mean and image_std must be lists of three numbers"):
        read_config(tmp_path)
