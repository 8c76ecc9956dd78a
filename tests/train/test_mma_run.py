"""The mma recipe through the trainer: a tiny llava-recipe base run, then MM-Adapters trained on the
demo's new question types over the frozen base, with adapter-only checkpoints and a bitwise
resume; and the config errors of the recipe."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from minilvlm.models.mma import is_adapter_key
from minilvlm.recipes.run_data import load_records
from minilvlm.recipes.run_folder import latest
from minilvlm.config import ConfigError
from minilvlm.recipes import load_config
from minilvlm.train.loop import train
from tests.train.test_run import TINY, losses

MMA = ["model.recipe=mma", "data.demo_tasks=mma", "train.train_vision=false", "model.mma.vision_layers=[1, 2]",
       "model.mma.hidden=4"]


@pytest.fixture
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("base")
    train(load_config(None, TINY + [f"train.run_dir={json.dumps(str(run))}", "train.steps=3", "train.eval_every=0",
                                    "train.ckpt_every=0"]))
    return run


def mma_overrides(base_run, run_dir):
    return TINY + MMA + [f"train.run_dir={json.dumps(str(run_dir))}",
                         f"model.mma.base_checkpoint={json.dumps(str(latest(base_run)))}",
                         f"data.tokenizer={json.dumps(str(base_run))}"]


def tool(name):
    path = Path(__file__).resolve().parents[2] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tools_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_mma_trains_adapters_on_the_frozen_base_and_resumes_bitwise(base_run, tmp_path, capsys, restore_determinism):
    full = tmp_path / "full"
    cfg = load_config(None, mma_overrides(base_run, full))
    summary = train(cfg)
    assert summary["step"] == 6
    tasks = {k[5:] for k in summary["accuracy"] if k.startswith("task/")}
    assert tasks & {"shape_left", "larger_shape", "count_left"} and not tasks & {"colour", "position"}
    folder = latest(full)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(is_adapter_key(k) for k in keys)
    # The frozen base is the base run's: the checkpoint holds no base tensor, and the base did not move.
    with safe_open(str(latest(base_run) / "model.safetensors"), "pt") as f:
        base_keys = set(f.keys())
    assert not base_keys & set(keys)
    # Text-only records carry the "Image: N/A" prefix; image records do not.
    records = [r for split in load_records(cfg, full).values() for r in split]
    text_only = [r for r in records if not r.images]
    assert text_only and all(r.turns[0].text.startswith("Image: N/A\n") for r in text_only)
    assert not any("N/A" in r.turns[0].text for r in records if r.images)

    # tools/eval.py scores the frozen base and the adapted model on the same new questions.
    evaluate_tool = tool("eval")
    for run in (base_run, full):
        out = tmp_path / f"{run.name}.json"
        assert evaluate_tool([str(run), "--data", str(full / "data"), "--split", "val", "--out", str(out)]) == 0
        assert "task/count_left" in json.loads(out.read_text())["accuracy"]

    # Resume at step 3 with LaVIN's dropout 0.1 (the default), which runs inside the fused mm_adapter op with
    # seeds from torch's checkpointed generator: the same losses and the same adapter weights, bit for bit.
    assert cfg.model.mma.dropout == 0.1
    split = tmp_path / "split"
    train(load_config(None, mma_overrides(base_run, split) + ["train.stop_at=3"]))
    train(load_config(None, mma_overrides(base_run, split)), resume=True)
    assert losses(split) == losses(full)
    assert latest(split).name == folder.name
    with safe_open(str(folder / "model.safetensors"), "pt") as f, \
            safe_open(str(latest(split) / "model.safetensors"), "pt") as g:
        assert sorted(f.keys()) == sorted(g.keys())
        for key in keys:
            assert torch.equal(f.get_tensor(key), g.get_tensor(key)), key


def test_mma_config_errors(base_run, tmp_path):
    good = mma_overrides(base_run, tmp_path / "run")
    with pytest.raises(ConfigError, match="unknown key 'model.mma.hiden'; did you mean 'model.mma.hidden'"):
        load_config(None, good + ["model.mma.hiden=8"])
    with pytest.raises(ConfigError, match="model.recipe: expected one of llava, mma, eve"):
        load_config(None, good + ["model.recipe=lavin"])
    with pytest.raises(ConfigError, match="set model.mma.base_checkpoint"):
        load_config(None, good + ['model.mma.base_checkpoint=""'])
    with pytest.raises(ConfigError, match="give both vision_weights and lm_weights"):
        load_config(None, good + ['model.mma.base_checkpoint=""', 'model.mma.lm_weights="x"'])
    with pytest.raises(ConfigError, match="keeps the ViT and the LM frozen"):
        load_config(None, good + ["train.train_vision=true"])
    with pytest.raises(ConfigError, match="vision_layers: expected block indices in 1..2"):
        load_config(None, good + ["model.mma.vision_layers=[3]"])
    with pytest.raises(ConfigError, match="fewer than 4; list the layers"):
        load_config(None, good + ["model.mma.vision_layers=[]"])
    missing = [f"model.mma.base_checkpoint={json.dumps(str(tmp_path / 'no_such_checkpoint'))}"]
    with pytest.raises(ConfigError, match="model.mma.base_checkpoint = .*no_such_checkpoint.*no such file"):
        load_config(None, good + missing)   # up front
    with pytest.raises(ConfigError, match="model.mma.base_checkpoint = .*no_such_checkpoint.*no such file"):
        train(load_config(None, good + missing, check_paths=False))
    cfg = load_config(None, good + ["model.decoder.dim=32"])   # a base of other sizes
    with pytest.raises(ValueError, match="does not hold this model's base"):
        train(cfg)
