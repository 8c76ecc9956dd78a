"""Runs started from paths alone: tiny random Hugging Face folders saved by transformers (CLIP and
SigLIP towers; a LLaMA whose tokenizer has no <image>, a Qwen2 with a padded vocabulary, a Phi-2, each
with its tokenizer) start llava runs with no dimension in the config and train 5 steps; the same
folders start an mma run and an eve run. The vocabulary rule: the LLaMA grows a row for <image>, the
mean of its rows; Qwen2's padded rows load as they are."""
import json

import pytest
import torch

from minilvlm import recipes
from minilvlm.data.tokenizer import Tokenizer
from minilvlm.recipes import load_config
from minilvlm.recipes.run_folder import latest
from minilvlm.train.loop import train
from tests.models.hf_fixtures import transformers
from tests.models.hf_tokenizers import QWEN_PADDING, hf_lvlm_folders
from tests.tools_main import tool_main

SHORT = ["data.demo_sizes={train = 40, val = 4, test = 4}", "train.global_batch=8", "train.micro_batch=8",
         "train.steps=5", "train.log_every=5", "train.eval_every=0", "train.ckpt_every=0", "eval.max_new_tokens=2",
         "eval.batch=4", "eval.samples=0", "train.threads=2"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return hf_lvlm_folders(tmp_path_factory.mktemp("hf"))


def _path(key, folder):
    return f"{key}={json.dumps(str(folder))}"


def _check_run(run_dir, summary, lm_folder):
    assert summary["step"] == 5 and latest(run_dir) is not None
    saved = json.loads((run_dir / "config.json").read_text())
    hf = json.loads((lm_folder / "config.json").read_text())
    assert saved["model"]["decoder"]["dim"] == hf["hidden_size"]
    assert saved["model"]["decoder"]["n_layers"] == hf["num_hidden_layers"]
    assert saved["data"]["tokenizer"] == str(lm_folder) and saved["data"]["template"] != "auto"
    assert (run_dir / "tokenizer.json").read_bytes() == (lm_folder / "tokenizer.json").read_bytes()
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("tower", ["clip", "siglip"])
@pytest.mark.parametrize("lm, template", [("llama", "vicuna_v1"), ("qwen2", "chatml"), ("phi", "phi")])
def test_llava_runs_start_from_paths_alone(folders, tmp_path, tower, lm, template):
    run = tmp_path / "run"
    cfg = load_config(None, SHORT + [_path("model.vision_weights", folders[tower]), _path("model.lm_weights", folders[lm]),
                                     _path("train.run_dir", run)])
    assert cfg.data.template == template
    _check_run(run, train(cfg), folders[lm])


def test_tools_train_prints_what_it_read(folders, tmp_path, capsys):
    run = tmp_path / "run"
    assert tool_main("train")(SHORT + [_path("model.vision_weights", folders["clip"]),
                                       _path("model.lm_weights", folders["qwen2"]), _path("train.run_dir", run)]) == 0
    err = capsys.readouterr().err
    assert f"config: model.vision: from model.vision_weights = {folders['clip']} (clip_vision_model)" in err
    assert "config: data.template: auto -> chatml" in err
    _check_run(run, json.loads((run / "summary.json").read_text()), folders["qwen2"])


def test_an_mma_run_starts_from_the_same_folders(folders, tmp_path):
    run = tmp_path / "run"
    cfg = load_config(None, SHORT + ["model.recipe=mma", "model.mma.vision_layers=[1, 2, 3]", "train.train_vision=false",
                                     _path("model.mma.vision_weights", folders["clip"]),
                                     _path("model.mma.lm_weights", folders["llama"]), _path("train.run_dir", run)])
    _check_run(run, train(cfg), folders["llama"])


def test_an_eve_run_starts_from_the_same_folders(folders, tmp_path):
    run = tmp_path / "run"
    cfg = load_config(None, SHORT + ["model.recipe=eve", "train.stage=pretrain", "model.eve.patch_size=4",
                                     "model.eve.pool=2", "model.eve.dim=16", "model.eve.heads=2",
                                     _path("model.vision_weights", folders["siglip"]),
                                     _path("model.lm_weights", folders["qwen2"]), _path("train.run_dir", run)])
    _check_run(run, train(cfg), folders["qwen2"])


@pytest.mark.parametrize("recipe", ["llava", "mma", "eve"])
def test_the_image_token_grows_the_vocabulary_and_padding_loads_as_it_is(folders, recipe):
    """LLaMA's tokenizer lacks <image>: one new row, the mean of the checkpoint's rows, in every
    recipe. Qwen2's embedding has more rows than its tokenizer has ids: they load unchanged."""
    extra = {"llava": [], "mma": ["model.recipe=mma", "model.mma.vision_layers=[1, 2, 3]", "train.train_vision=false"],
             "eve": ["model.recipe=eve", "train.stage=finetune", "model.eve.patch_size=4", "model.eve.pool=2",
                     "model.eve.dim=16", "model.eve.heads=2"]}[recipe]
    keys = ("model.mma.vision_weights", "model.mma.lm_weights") if recipe == "mma" else ("model.vision_weights",
                                                                                          "model.lm_weights")
    for lm in ("llama", "qwen2"):
        cfg = load_config(None, extra + [_path(keys[0], folders["clip"]), _path(keys[1], folders[lm])])
        tokenizer = Tokenizer(folders[lm])
        model = recipes.of(cfg).build_model(cfg, tokenizer)
        hf = transformers.AutoModelForCausalLM.from_pretrained(folders[lm])
        theirs, ours = hf.get_input_embeddings().weight, model.lm.embed.weight
        assert tokenizer.image_token_id < ours.shape[0]
        assert torch.equal(ours[:theirs.shape[0]], theirs)
        if lm == "llama":
            assert ours.shape[0] == theirs.shape[0] + 1 == tokenizer.vocab_size
            torch.testing.assert_close(ours[-1], theirs.double().mean(0).float())
            torch.testing.assert_close(model.lm.lm_head.weight[-1], hf.lm_head.weight.double().mean(0).float())
        else:
            assert ours.shape[0] == theirs.shape[0] == tokenizer.vocab_size + QWEN_PADDING - 1
