"""model.vision_weights / model.lm_weights from Hugging Face folders (tiny transformers models)."""
import json
from types import SimpleNamespace

import pytest
import torch

from minilvlm.config import ConfigError
from minilvlm.recipes import load_config
from minilvlm import recipes
from tests.models import hf_fixtures

# The tiny fixtures' architectures, as config overrides.
CLIP = ["model.vision.image_size=30", "model.vision.patch_size=6", "model.vision.dim=48", "model.vision.n_layers=3",
        "model.vision.n_heads=4", "model.vision.mlp_dim=72", "model.vision.act=quick_gelu"]
LLAMA = ["model.decoder.dim=64", "model.decoder.n_layers=2", "model.decoder.n_heads=4", "model.decoder.n_kv_heads=2",
         "model.decoder.mlp_dim=96"]
TOKENIZER = SimpleNamespace(vocab_size=211, image_token_id=211)


def build_model(cfg, tokenizer):
    return recipes.of(cfg).build_model(cfg, tokenizer)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {"clip": (root / "clip", hf_fixtures.clip_vision(root / "clip")),
            "llama": (root / "llama", hf_fixtures.llama(root / "llama"))}


def paths(folders):
    return [f"model.vision_weights={json.dumps(str(folders['clip'][0]))}",
            f"model.lm_weights={json.dumps(str(folders['llama'][0]))}"]


@pytest.mark.parametrize("recipe", ["llava", "eve"])
def test_hf_folders_load_into_the_tower_and_the_lm(folders, recipe):
    extra = ["model.recipe=eve", "train.stage=pretrain", "model.eve.patch_size=3", "model.eve.pool=2",
             "model.eve.dim=16", "model.eve.heads=2"] if recipe == "eve" else []
    model = build_model(load_config(None, CLIP + LLAMA + extra + paths(folders)), TOKENIZER)
    tower = model.teacher if recipe == "eve" else model.vision
    hf_clip, hf_llama = folders["clip"][1], folders["llama"][1]
    torch.testing.assert_close(tower.pos_embed, hf_clip.vision_model.embeddings.position_embedding.weight)
    torch.testing.assert_close(tower.layers[2].fc2.weight, hf_clip.vision_model.encoder.layers[2].mlp.fc2.weight)
    torch.testing.assert_close(model.lm.layers[1].attn.wk.weight, hf_llama.model.layers[1].self_attn.k_proj.weight)
    torch.testing.assert_close(model.lm.lm_head.weight, hf_llama.lm_head.weight)
    if recipe == "eve":
        assert not any(p.requires_grad for p in model.teacher.parameters())


def test_a_folder_of_another_architecture_is_a_clear_error(folders):
    with pytest.raises(ConfigError, match=r"model.decoder.dim: the config sets 32 but model.lm_weights = .* has 64"):
        build_model(load_config(None, CLIP + LLAMA + ["model.decoder.dim=32"] + paths(folders)), TOKENIZER)
    swapped = [f"model.lm_weights={json.dumps(str(folders['clip'][0]))}"]
    with pytest.raises(ConfigError, match="holds a 'clip_vision_model' model; expected one of llama, qwen2, phi"):
        build_model(load_config(None, LLAMA + swapped), TOKENIZER)
