"""The recipe registry: every front end asks the recipe, so a fourth recipe is one module plus
`register` (tests/recipes/toy_recipe.py), and the trainer, evaluation and soup run it unchanged."""
import json

import pytest
from safetensors import safe_open

from minilvlm import recipes
from minilvlm.config import ConfigError
from minilvlm.curation.soup import soup_of
from minilvlm.eval.benchmark import eval_records, load_split
from minilvlm.eval.load import load_model
from minilvlm.recipes.run_folder import latest
from minilvlm.train.loop import train
from tests.recipes import toy_recipe
from tests.tiny_run import TINY_MODEL

TOY = TINY_MODEL + ["model.recipe=pooled", "data.demo_sizes={train = 64, val = 8, test = 8}", "train.global_batch=16",
                    "train.micro_batch=8", "train.steps=4", "train.log_every=2", "train.eval_every=0",
                    "train.ckpt_every=2", "optim.lr=1e-2", "optim.warmup_steps=1", "eval.max_new_tokens=4",
                    "eval.samples=0"]


@pytest.fixture
def pooled(monkeypatch):
    monkeypatch.setitem(recipes._REGISTRY, "pooled", toy_recipe.RECIPE)
    return toy_recipe.RECIPE


def test_unknown_recipes_are_listed_and_registered_ones_are_known(pooled):
    with pytest.raises(ConfigError, match="model.recipe: expected one of llava, mma, eve, pooled, got 'fuyu'"):
        recipes.load_config(None, ["model.recipe=fuyu"])
    with pytest.raises(ConfigError, match="the pooled recipe's stages are 'finetune' \\(the image layer"):
        recipes.load_config(None, ["model.recipe=pooled", "train.stage=pretrain"])
    assert recipes.of(recipes.load_config(None, TOY)) is pooled


def test_a_fourth_recipe_trains_evaluates_and_soups_through_the_registry_alone(pooled, tmp_path, capsys):
    run = tmp_path / "run"
    summary = train(recipes.load_config(None, TOY + [f"train.run_dir={json.dumps(str(run))}"]))
    assert summary["step"] == 4 and summary["accuracy"]
    out = capsys.readouterr().err
    assert "vision pretraining skipped: the pooled recipe has no such step" in out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [2, 4]
    with safe_open(str(latest(run) / "model.safetensors"), "pt") as f:   # what the recipe said it holds
        assert sorted(f.keys()) == ["image_layer.bias", "image_layer.weight"]
    loaded = load_model(run)
    assert loaded.recipe is pooled
    result = eval_records(loaded, load_split(loaded, "test")[0])
    assert result["count"] == 8 and result["accuracy"] == summary["accuracy"]   # the trainer's own figures
    tensors, info, members = soup_of([run / "checkpoints" / "step_000002", run / "checkpoints" / "step_000004"])
    assert sorted(tensors) == ["image_layer.bias", "image_layer.weight"] and info["method"] == "uniform"
