"""LoRA runs (model.lora): the llava recipe over a trained base and the eve recipe over Hugging Face
folders train only the LoRA matrices and the projector (the embedder for eve); checkpoints hold those
tensors alone; a run resumes bitwise; and configs/demo_lora.toml trains under 5% of the demo model."""
import json
import types
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from minilvlm import recipes
from minilvlm.config import ConfigError
from minilvlm.eval.chat import ask
from minilvlm.eval.load import load_model
from minilvlm.recipes import load_config
from minilvlm.recipes.run_folder import latest
from minilvlm.train.loop import train
from tests.lora_run import train_lora
from tests.models import hf_fixtures
from tests.train.test_run import losses

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DEMO_VOCAB = 258   # the demo's word-level tokenizer over its 16,000 training records


def _checkpoint_keys(run_dir):
    with safe_open(str(latest(run_dir) / "model.safetensors"), "pt") as f:
        return set(f.keys())


@pytest.fixture
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


def test_a_llava_lora_run_trains_and_saves_only_lora_and_the_projector(tiny_run, tmp_path):
    run = tmp_path / "lora"
    summary = train_lora(tiny_run, run)
    assert summary["step"] == 6
    keys = _checkpoint_keys(run)
    assert keys == {k for k in keys if k.startswith("projector.") or k.endswith((".lora_a", ".lora_b"))}
    assert {k for k in keys if k.startswith("projector.")} == {"projector.0.weight", "projector.0.bias",
                                                               "projector.2.weight", "projector.2.bias"}
    assert len([k for k in keys if k.endswith(".lora_a")]) == 7   # one LM block: q k v o gate up down
    loaded = load_model(run)   # the frozen base comes back from model.init_from
    lora_b = [p for n, p in loaded.model.named_parameters() if n.endswith("lora_b")]
    assert all(torch.count_nonzero(b) > 0 for b in lora_b)
    base = load_model(tiny_run)
    torch.testing.assert_close(loaded.model.lm.embed.weight, base.model.lm.embed.weight, rtol=0, atol=0)
    torch.testing.assert_close(loaded.model.lm.layers[0].attn.wq.weight, base.model.lm.layers[0].attn.wq.weight,
                               rtol=0, atol=0)
    assert isinstance(ask(loaded, "What shape is on the left?", temperature=0, max_new_tokens=3), str)


def test_a_lora_run_resumes_bitwise(tiny_run, tmp_path, restore_determinism):
    full, cut = tmp_path / "full", tmp_path / "cut"
    train_lora(tiny_run, full, ["train.deterministic=true"])
    train_lora(tiny_run, cut, ["train.deterministic=true", "train.stop_at=3"])
    cfg = recipes.config_from_dict(json.loads((cut / "config.json").read_text()))
    cfg.train.stop_at = 0
    train(cfg, resume=True)
    assert losses(cut) == losses(full)


def test_an_eve_run_takes_lora_on_its_lm(tmp_path):
    hf_fixtures.llama(tmp_path / "llama", vocab_size=300)   # no tokenizer in the folder: the demo builds its own
    run = tmp_path / "run"
    overrides = ["model.recipe=eve", "train.stage=finetune", "model.eve.image_size=32", "model.eve.patch_size=8",
                 "model.eve.pool=2", "model.eve.dim=16", "model.eve.heads=2", "model.lora.rank=2",
                 f"model.lm_weights={json.dumps(str(tmp_path / 'llama'))}",
                 "data.demo_sizes={train = 32, val = 4, test = 4}", "train.global_batch=8", "train.micro_batch=8",
                 "train.steps=3", "train.log_every=3", "train.eval_every=0", "train.ckpt_every=0",
                 "eval.max_new_tokens=2", "eval.batch=4", "eval.samples=0", "train.threads=2",
                 f"train.run_dir={json.dumps(str(run))}"]
    train(load_config(None, overrides))
    keys = _checkpoint_keys(run)
    assert any(k.startswith("embedder.") for k in keys) and any(k.startswith("projector.") for k in keys)
    assert {k for k in keys if k.startswith("lm.")} == {k for k in keys if k.endswith((".lora_a", ".lora_b"))}
    assert load_model(run).model.lm.layers[1].mlp.w_down.lora_a.shape == (2, 96)


def test_lora_needs_its_frozen_base_from_files_and_a_recipe_that_has_it():
    with pytest.raises(ConfigError, match="model.lora: LoRA checkpoints hold only what trains"):
        load_config(None, ["model.lora.rank=4"])
    with pytest.raises(ConfigError, match="model.lora.rank: the mma recipe has no LoRA"):
        load_config(None, ["model.recipe=mma", "model.lora.rank=4", "model.mma.base_checkpoint=x",
                           "train.train_vision=false", "model.mma.vision_layers=[1, 2, 3]"])
    with pytest.raises(ConfigError, match="model.lora.dropout = 1.5: expected a finite number >= 0 and < 1"):
        load_config(None, ["model.lora.dropout=1.5"])


def test_the_demo_lora_config_trains_under_five_percent_of_the_model():
    cfg = load_config(CONFIGS / "demo_lora.toml", check_paths=False)   # its base run is made by the demo
    recipe = recipes.of(cfg)
    tokenizer = types.SimpleNamespace(vocab_size=DEMO_VOCAB, image_token_id=4, base_vocab_size=DEMO_VOCAB)
    with torch.device("meta"):
        model = recipe.build_model(cfg, tokenizer, load_weights=False)
    recipe.set_stage(model, cfg)
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trained / total < 0.05
    assert trained == sum(p.numel() for p in model.projector.parameters()) + sum(
        p.numel() for n, p in model.lm.named_parameters() if n.endswith(("lora_a", "lora_b")))
