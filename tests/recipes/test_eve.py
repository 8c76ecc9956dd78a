"""The eve recipe through the trainer: its config section and errors, the teacher loaded from a llava
run's checkpoint, a short run through tools/train.py, and the paper configs built on the meta device."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from minilvlm.data.tokenizer import Tokenizer
from minilvlm.models.llava import LLaVA, LLaVAConfig
from minilvlm.config import ConfigError
from minilvlm.recipes import load_config
from minilvlm import recipes
from tests.train.test_run import TINY, losses, tool_main


def build_model(cfg, tokenizer, load_weights=True):
    return recipes.of(cfg).build_model(cfg, tokenizer, load_weights)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
EVE_TINY = TINY + ["model.recipe=eve", "train.stage=pretrain", "model.eve.patch_size=8", "model.eve.pool=2",
                   "model.eve.dim=16", "model.eve.heads=2", "model.eve.align_layers=[1, 0]"]
TOKENIZER = SimpleNamespace(vocab_size=60, image_token_id=60)


def test_eve_section_and_stage_errors(tmp_path):
    cfg = load_config(None, EVE_TINY + ["model.eve.random_teacher=true"])
    assert cfg.model.eve.align_layers == [1, 0] and recipes.of(cfg).image_size(cfg) == cfg.model.vision.image_size
    with pytest.raises(ConfigError, match="eve recipe's stages are 'prealign' .*; 'pretrain' .*; 'finetune' "):
        load_config(None, EVE_TINY + ["train.stage=stage2"])
    with pytest.raises(ConfigError, match="llava recipe's stages are 'pretrain' .*; 'finetune' .*; got 'prealign'"):
        load_config(None, ["train.stage=prealign"])
    with pytest.raises(ConfigError, match="model.recipe: expected one of llava, mma, eve"):
        load_config(None, ["model.recipe=fuyu"])
    with pytest.raises(ConfigError, match="model.vision_weights: stage 'pretrain' aligns .* model.eve.random_teacher = true"):
        load_config(None, EVE_TINY)
    finetune = load_config(None, EVE_TINY + ["train.stage=finetune"])   # no teacher needed
    assert build_model(finetune, TOKENIZER).teacher is None
    with pytest.raises(ConfigError, match="model.eve: .*not a multiple of patch_size x pool = 8 x 3"):
        load_config(None, EVE_TINY + ["model.eve.random_teacher=true", "model.eve.pool=3"])
    with pytest.raises(ConfigError, match="model.eve.align_layers: expected a list of integers"):
        load_config(None, EVE_TINY + ["model.eve.random_teacher=true", "model.eve.align_layers=['x']"])
    with pytest.raises(ConfigError, match="unknown key 'model.eve.pol'; did you mean 'model.eve.pool'"):
        load_config(None, EVE_TINY + ["model.eve.pol=2"])
    nope = [f"model.vision_weights={json.dumps(str(tmp_path / 'nope'))}"]
    with pytest.raises(ConfigError, match="model.vision_weights = '.*nope': no such file or folder"):
        load_config(None, EVE_TINY + nope)   # up front
    with pytest.raises(ConfigError, match="model.vision_weights = '.*nope': no such file or folder"):
        build_model(load_config(None, EVE_TINY + nope, check_paths=False), TOKENIZER)


def llava_checkpoint(cfg, path):
    """A llava model whose tower matches cfg.model.vision, saved as a run's model.safetensors."""
    decoder = cfg.model.decoder.__class__(**{**vars(cfg.model.decoder), "vocab_size": TOKENIZER.vocab_size})
    torch.manual_seed(3)
    llava = LLaVA(LLaVAConfig(vision=cfg.model.vision, decoder=decoder, image_token_id=TOKENIZER.image_token_id))
    for p in llava.vision.parameters():
        torch.nn.init.normal_(p, std=0.1)
    save_file(llava.state_dict(), str(path))
    return llava


def test_teacher_from_a_llava_run_checkpoint(tmp_path):
    cfg = load_config(None, EVE_TINY + [f"model.vision_weights={json.dumps(str(tmp_path / 'model.safetensors'))}"],
                      check_paths=False)   # the file is written next
    llava = llava_checkpoint(cfg, tmp_path / "model.safetensors")
    model = build_model(cfg, TOKENIZER)
    for key, value in llava.vision.state_dict().items():
        torch.testing.assert_close(model.teacher.state_dict()[key], value, rtol=0, atol=0)
    assert not any(p.requires_grad for p in model.teacher.parameters())
    wrong = load_config(None, EVE_TINY + ["model.vision.dim=32",
                                          f"model.vision_weights={json.dumps(str(tmp_path / 'model.safetensors'))}"])
    with pytest.raises(ConfigError, match="does not fit the configured VisionTransformer.*wrong shape"):
        build_model(wrong, TOKENIZER)


def test_short_eve_run_through_the_tool(tmp_path, capsys):
    weights = tmp_path / "llava.safetensors"
    run = tmp_path / "eve"
    overrides = EVE_TINY + [f"train.run_dir={json.dumps(str(run))}", f"model.vision_weights={json.dumps(str(weights))}",
                            "train.steps=4", "train.eval_every=2", "train.ckpt_every=2", "train.deterministic=false"]
    assert tool_main()(overrides) == 2    # the weights file does not exist yet: a clear error, no traceback
    assert "model.vision_weights = " in capsys.readouterr().err
    llava_checkpoint(load_config(None, overrides, check_paths=False), weights)
    assert tool_main()(overrides) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    aux = [r["aux_loss"] for r in rows if "aux_loss" in r]
    assert len(aux) == 4 and all(0 < a < 2 for a in aux)
    assert [s for s, _ in losses(run)] == [1, 2, 3, 4]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 4 and sum(n for k, n in summary["count"].items() if not k.startswith("task/")) == 8
    saved = run / "checkpoints" / "step_000004" / "model.safetensors"
    with safe_open(str(saved), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("embedder.") for k in keys) and not any(k.startswith("teacher.") for k in keys)
    # resume the finished run's folder one step further: the checkpoint loads without teacher tensors
    assert tool_main()(["--resume", str(run), "train.steps=5"]) == 0
    assert [s for s, _ in losses(run)][-1] == 5
    # the next stage (instruction tuning) starts from this run's weights; the aligner is dropped
    previous = run / "checkpoints" / "step_000005"
    stage3 = load_config(None, EVE_TINY + ["train.stage=finetune", f"model.init_from={json.dumps(str(previous))}"])
    tokenizer = Tokenizer(run)
    model = build_model(stage3, tokenizer)
    assert model.aligner is None and model.teacher is None
    with safe_open(str(previous / "model.safetensors"), "pt") as f:
        for key in ("embedder.separator", "projector.0.weight", "lm.layers.0.attn.wq.weight"):
            torch.testing.assert_close(model.state_dict()[key], f.get_tensor(key), rtol=0, atol=0)
    wider = load_config(None, EVE_TINY + ["train.stage=finetune", "model.eve.dim=32",
                                          f"model.init_from={json.dumps(str(previous))}"])
    with pytest.raises(ConfigError, match="model.init_from = .* does not fit the configured EVE.*wrong shape"):
        build_model(wider, tokenizer)


def meta_model(name):
    cfg = load_config(CONFIGS / name, check_paths=False)   # its paths are placeholders
    tokenizer = SimpleNamespace(vocab_size=cfg.model.decoder.vocab_size, image_token_id=cfg.model.decoder.vocab_size)
    with torch.device("meta"):
        return cfg, build_model(cfg, tokenizer, load_weights=False)


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_eve_vicuna7b_config_builds_on_meta():
    cfg, model = meta_model("eve_vicuna7b.toml")
    assert cfg.train.stage == "prealign" and cfg.optim.lr == 4e-4 and cfg.train.global_batch == 512
    assert count(model.lm) == 6_738_415_616                       # Vicuna-7B
    assert 303e6 < count(model.teacher) < 304.5e6                 # CLIP ViT-L/14-336 vision tower
    assert model.config.image_tokens == 1 + 24 * 25
    assert model.config.align_layers == (32, 28, 24, 20, 16, 12, 8, 4, 0)
    assert model.lm.embed.weight.device.type == "meta"
    trained = model.set_stage(cfg.train.stage)
    assert trained == ["embedder", "projector", "aligner"]


def test_allava_phi2_config_builds_on_meta():
    cfg, model = meta_model("allava_phi2.toml")
    assert (cfg.optim.schedule, cfg.optim.lr, cfg.optim.min_lr) == ("warm_restarts", 2e-5, 2e-6)
    assert count(model.lm) == 2_779_683_840                       # Phi-2
    assert 303e6 < count(model.vision) < 304.5e6
    assert model.config.image_tokens == 576
    assert model.set_stage(cfg.train.stage, cfg.train.pretrain_lm, cfg.train.train_vision) == ["projector", "lm"]


def test_demo_eve_config_loads():
    cfg = load_config(CONFIGS / "demo_eve.toml", check_paths=False)   # names the demo run's checkpoint
    assert cfg.model.recipe == "eve" and cfg.train.stage == "pretrain"
    with torch.device("meta"):
        model = build_model(cfg, TOKENIZER, load_weights=False)
    assert model.config.image_tokens == 21 and model.config.align_layers == (3, 2, 1)


def test_demo_eve_matches_the_llava_demo_in_size_at_inference():
    # docs/recipes.md compares the two at a matched parameter count: EVE's embedder and projector stand
    # where the llava demo's tower and projector stand; the LM is the same config in both.
    with torch.device("meta"):
        eve = build_model(load_config(CONFIGS / "demo_eve.toml", check_paths=False), TOKENIZER, load_weights=False)
        llava = build_model(load_config(CONFIGS / "demo.toml", check_paths=False), TOKENIZER, load_weights=False)
    eve_visual = sum(p.numel() for m in (eve.embedder, eve.projector) for p in m.parameters())
    llava_visual = sum(p.numel() for m in (llava.vision, llava.projector) for p in m.parameters())
    assert sum(p.numel() for p in eve.lm.parameters()) == sum(p.numel() for p in llava.lm.parameters())
    assert abs(eve_visual - llava_visual) < 0.01 * llava_visual, (eve_visual, llava_visual)
