"""Hugging Face LLaVA folders in (minilvlm/weights/llava.py, `model.init_from`): both key layouts,
CLIP and SigLIP towers, LLaMA and Qwen2 (tied) LMs, both projector activations, give transformers'
logits; settings we cannot represent are errors that name them; a LLaVA folder's tower and LM serve
as model.vision_weights / model.lm_weights; and the round trip through a run and tools/export_hf.py."""
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from minilvlm import recipes
from minilvlm.config import ConfigError
from minilvlm.recipes import load_config
from minilvlm.train.loop import train
from minilvlm.weights import WeightsError
from minilvlm.weights.llava import read_llava
from tests.models import hf_fixtures
from tests.models.hf_fixtures import transformers
from tests.models.hf_tokenizers import demo_texts, family_tokenizer
from tests.tools_main import TOOLS

IMAGE_ID = 149


def _tokenizer(vocab_size=150, image_token_id=IMAGE_ID):
    return SimpleNamespace(vocab_size=vocab_size, image_token_id=image_token_id, base_vocab_size=image_token_id)


def _relative_error(ours, theirs):
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def _logits_agree(model, hf, vision):
    ids = torch.tensor([[3] + [IMAGE_ID] * 16 + [5, 6, 7, 8], [9, 10] + [IMAGE_ID] * 16 + [11, 12, 13]])
    pixels = torch.randn(2, 3, 32, 32)   # float pixels: taken as normalised by both stacks
    with torch.no_grad():
        ours = model.eval()(ids, pixels)
        theirs = hf(input_ids=ids, pixel_values=pixels).logits
    return _relative_error(ours, theirs)


@pytest.mark.parametrize("layout", ["legacy", "modules"])
@pytest.mark.parametrize("vision, text, act", [("clip", "llama", "gelu"), ("siglip", "qwen2", "linear"),
                                               ("clip", "qwen2", "linear")])
def test_llava_folders_in_both_layouts_give_transformers_logits(tmp_path, layout, vision, text, act):
    hf = hf_fixtures.llava(tmp_path, vision=vision, text=text, layout=layout, projector_act=act)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        prefix = "model.language_model." if layout == "modules" else "language_model.model."
        assert any(k.startswith(prefix) for k in f.keys())
    notes = []
    cfg = load_config(None, [f"model.init_from={json.dumps(str(tmp_path))}"], notes)
    assert cfg.model.projector == {"gelu": "mlp2x_gelu", "linear": "linear"}[act]
    assert cfg.model.vision.dim == hf.config.vision_config.hidden_size and cfg.model.decoder.tie_embeddings == (
        text == "qwen2")
    assert any(n.startswith("model.feature_layer: from model.init_from") for n in notes)
    model = recipes.of(cfg).build_model(cfg, _tokenizer())
    assert _logits_agree(model, hf, vision) < 1e-5


@pytest.mark.parametrize("setting, value, message", [
    ("vision_feature_layer", [-2, -1], r"vision_feature_layer \[-2, -1\]: only one layer can be read"),
    ("vision_feature_select_strategy", "full", "'full' with a clip_vision_model tower cannot be represented"),
    ("projector_hidden_act", "silu", "projector_hidden_act 'silu' cannot be represented; supported: gelu, linear"),
    ("multimodal_projector_bias", False, "multimodal_projector_bias false cannot be represented"),
    ("text_config", {"model_type": "mistral"}, "text_config.model_type 'mistral' is not supported"),
])
def test_settings_we_cannot_represent_are_named(tmp_path, setting, value, message):
    hf_fixtures.llava(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config[setting] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"model.init_from={json.dumps(str(tmp_path))}"])


def test_a_llava_folder_serves_as_tower_and_lm_weights(tmp_path):
    hf = hf_fixtures.llava(tmp_path, layout="modules")
    cfg = load_config(None, [f"model.vision_weights={json.dumps(str(tmp_path))}",
                             f"model.lm_weights={json.dumps(str(tmp_path))}", "model.feature_layer=-2"])
    model = recipes.of(cfg).build_model(cfg, _tokenizer())
    torch.testing.assert_close(model.vision.layers[1].fc1.weight, hf.model.vision_tower.vision_model.encoder.layers[1]
                               .mlp.fc1.weight)
    torch.testing.assert_close(model.lm.layers[1].attn.wo.weight, hf.model.language_model.layers[1].self_attn.o_proj.weight)
    torch.testing.assert_close(model.lm.lm_head.weight, hf.lm_head.weight)


def test_an_image_token_other_than_the_folders_is_refused(tmp_path):
    hf_fixtures.llava(tmp_path)
    cfg = load_config(None, [f"model.init_from={json.dumps(str(tmp_path))}"])
    with pytest.raises(ConfigError, match="image_token_index is 149, but the tokenizer's <image> is id 140"):
        recipes.of(cfg).build_model(cfg, _tokenizer(image_token_id=140))
    assert read_llava(tmp_path).image_token_id == IMAGE_ID
    hf_fixtures.llama(tmp_path / "llama")
    with pytest.raises(WeightsError, match="model_type 'llama' is not 'llava'"):
        read_llava(tmp_path / "llama")


# ---- the round trip: a transformers folder -> a run -> tools/export_hf.py -> transformers -------------

TINY_RUN = ["data.demo_sizes={train = 32, val = 8, test = 8}", "train.global_batch=8", "train.micro_batch=8",
            "train.steps=1", "train.log_every=1", "train.eval_every=0", "train.ckpt_every=0", "eval.max_new_tokens=2",
            "eval.batch=8", "eval.samples=0", "train.threads=2", "optim.lr=0", "optim.min_lr=0"]


def _llava_with_tokenizer(folder, layout, extra_token):
    """A llava-hf-style folder: a LLaMA-family tokenizer with <image> (and, with extra_token, one more
    added token that the model's vocabulary lacks), and the model saved by transformers."""
    family_tokenizer(folder, "llama", demo_texts({"train": 40, "val": 4, "test": 4}))
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_id, vocab = tokenizer.convert_tokens_to_ids("<image>"), len(tokenizer)
    if extra_token:
        tokenizer.add_special_tokens({"additional_special_tokens": ["<image>", "<extra>"]})
    tokenizer.save_pretrained(folder)
    return hf_fixtures.llava(folder, layout=layout, vocab_size=vocab, image_token_index=image_id), image_id, vocab


@pytest.mark.parametrize("layout, extra_token", [("legacy", False), ("modules", True)])
def test_round_trip_through_a_run_and_the_export(tmp_path, layout, extra_token):
    folder, run, out = tmp_path / "hf", tmp_path / "run", tmp_path / "out"
    hf, image_id, vocab = _llava_with_tokenizer(folder, layout, extra_token)
    train(load_config(None, TINY_RUN + [f"model.init_from={json.dumps(str(folder))}",
                                        f"train.run_dir={json.dumps(str(run))}"]))
    result = subprocess.run([sys.executable, str(TOOLS / "export_hf.py"), str(run), "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    back = transformers.LlavaForConditionalGeneration.from_pretrained(out).eval()
    rows = back.get_input_embeddings().weight
    assert rows.shape[0] == vocab + extra_token and json.loads((out / "config.json").read_text())[
        "text_config"]["vocab_size"] == rows.shape[0]
    assert torch.equal(rows[:vocab], hf.get_input_embeddings().weight)       # the original rows, unchanged
    if extra_token:   # the grown row: the mean of the original ones
        torch.testing.assert_close(rows[vocab], hf.get_input_embeddings().weight.double().mean(0).float())
    ids = torch.tensor([[1] + [image_id] * 16 + [5, 6, 7, 8, 9]])
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        original = hf(input_ids=ids, pixel_values=pixels).logits
        exported = back(input_ids=ids, pixel_values=pixels).logits[..., :vocab]
    assert _relative_error(exported, original) < 1e-5
