"""The user tools on an mma run, whose checkpoints hold only the adapters: tools/eval.py reproduces
the trainer's accuracy, tools/generate.py answers text-only prompts with the recipe's "Image: N/A"
prefix and image prompts, tools/soup.py soups adapter checkpoints."""
import json

import pytest
from safetensors.torch import load_file

from minilvlm.data.templates import render
from minilvlm.eval.chat import prompt_inputs
from minilvlm.eval.load import load_model
from minilvlm.recipes.run_folder import latest
from minilvlm.recipes import load_config
from minilvlm.train.loop import train
from tests.tools_main import tool_main
from tests.train.test_run import TINY
from tests.train.test_mma_run import mma_overrides


@pytest.fixture(scope="module")
def mma_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("base")
    train(load_config(None, TINY + [f"train.run_dir={json.dumps(str(base))}", "train.steps=3", "train.eval_every=0",
                                    "train.ckpt_every=0"]))
    run = tmp_path_factory.mktemp("mma") / "run"
    train(load_config(None, mma_overrides(base, run) + ["train.eval_every=0"]))
    return run


def test_eval_reproduces_the_trainer_accuracy_from_an_adapter_checkpoint(mma_run, tmp_path):
    summary = json.loads((mma_run / "summary.json").read_text())
    out = tmp_path / "results.json"
    assert tool_main("eval")([str(mma_run), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["accuracy"] == summary["accuracy"] and result["accuracy_count"] == summary["count"]


def test_text_only_prompts_get_the_recipe_prefix(mma_run, capsys):
    loaded = load_model(mma_run)
    prefix = loaded.cfg.model.mma.text_only_prefix
    assert prefix
    ids, images = prompt_inputs(loaded, "What is 3 + 4?")
    expected = render([{"role": "user", "content": prefix + "What is 3 + 4?"}], loaded.tokenizer,
                      loaded.cfg.data.template, generation_prompt=True).ids
    assert ids[0].tolist() == expected and images.shape[0] == 0
    with_image, images = prompt_inputs(loaded, "What shape is on the left?", mma_run / "data" / "images" / "test"
                                       / sorted((mma_run / "data" / "images" / "test").iterdir())[0].name)
    assert images.shape[0] == 1 and with_image[0].tolist() != expected
    for args in (["--prompt", "What is 3 + 4?"],
                 ["--prompt", "What shape is on the left?", "--image",
                  str(sorted((mma_run / "data" / "images" / "test").iterdir())[0])]):
        assert tool_main("generate")([str(mma_run), *args, "--temperature", "0", "--max-new-tokens", "3"]) == 0
        assert capsys.readouterr().out.strip()


def test_soups_of_adapter_checkpoints(mma_run, tmp_path, capsys):
    ckpts = [str(mma_run / "checkpoints" / f"step_{s:06d}") for s in (3, 6)]
    assert tool_main("soup")([*ckpts, "--out", str(tmp_path / "uniform")]) == 0
    tensors = load_file(tmp_path / "uniform" / "model.safetensors")
    assert set(tensors) == set(load_file(latest(mma_run) / "model.safetensors"))   # adapters only
    assert tool_main("soup")([*ckpts, "--out", str(tmp_path / "greedy"), "--greedy", "--split", "val"]) == 0
    assert "greedy soup" in capsys.readouterr().out
    assert tool_main("eval")([str(tmp_path / "greedy"), "--split", "val", "--out", str(tmp_path / "g.json")]) == 0
