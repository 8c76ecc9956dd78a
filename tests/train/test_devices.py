"""The device plumbing, proved without a GPU: every shipped config's dry run (one full training
step on the meta device), a step of each recipe on meta with every tensor it makes on record (none
may land on the CPU), and each recipe's forward on fake CUDA tensors (a device mismatch raises
there). Plus the CLI's answers: --dry-run, and a GPU asked for where there is none."""
import json
import re
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from minilvlm import recipes
from minilvlm.optim import FusedAdamW
from minilvlm.recipes import load_config
from minilvlm.train.dry_run import dry_run, dry_run_tokenizer, synthetic_batch
from tests.tiny_run import TINY_MODEL
from tests.train.test_run import tool_main

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml"))
EVE_TEACHER = ["model.eve.random_teacher=true", "model.eve.patch_size=4", "model.eve.pool=2"]
TINY_RECIPES = {
    "llava": TINY_MODEL + ["data.max_len=40", "train.micro_batch=2"],
    "mma": TINY_MODEL + ["model.recipe=mma", "model.mma.base_checkpoint=unused", "model.vision.n_layers=4",
                         "data.max_len=40", "train.micro_batch=2"],
    "eve": TINY_MODEL + ["model.recipe=eve", "data.max_len=80", "train.micro_batch=2", *EVE_TEACHER],
}


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_shipped_config_dry_runs_on_meta(config):
    report = dry_run(load_config(config, check_paths=False), nproc=8)   # a dry run reads no weights or data
    assert report["trainable"] > 0 and report["parameters"] >= report["trainable"]
    per_rank = report["bytes_per_rank"]
    assert per_rank["activations"] > per_rank["activations_checkpointed"] > 0
    if config.stem == "lavin_llama7b_sqa":   # LaVIN's 3.8M adapters (the config's own comment derives it)
        assert report["trainable"] == 3_781_296


class DeviceRecorder(TorchDispatchMode):
    """Every aten call's output devices while active (forward, backward and the optimizer step)."""

    def __init__(self):
        super().__init__()
        self.cpu_outputs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in tree_leaves(out)):
            self.cpu_outputs.append(str(func))
        return out


def _meta_model(name):
    cfg = load_config(None, TINY_RECIPES[name], check_paths=False)   # built on meta: no weights read
    recipe = recipes.of(cfg)
    tokenizer, _ = dry_run_tokenizer(cfg)
    with torch.device("meta"):
        model = recipe.build_model(cfg, tokenizer, load_weights=False)
    recipe.set_stage(model, cfg)
    return cfg, recipe, model


@pytest.mark.parametrize("name", sorted(TINY_RECIPES))
def test_a_training_step_on_meta_makes_no_tensor_on_the_cpu(name):
    cfg, recipe, model = _meta_model(name)
    optimizer = FusedAdamW(model.param_groups(1e-3), lr=1e-3)
    batch = synthetic_batch(cfg, recipe, model, torch.device("meta"))
    recorder = DeviceRecorder()
    with recorder:
        loss, count, aux = model.batch_loss(batch)
        (loss / count + (aux if aux is not None else 0.0)).backward()
        norm, scale = optimizer.clip_scale(1.0)
        optimizer.step(grad_scale=scale)
    assert loss.device.type == "meta" and norm.device.type == "meta"
    assert not recorder.cpu_outputs, f"tensors made on the CPU inside the step: {sorted(set(recorder.cpu_outputs))}"


@pytest.mark.parametrize("name", sorted(TINY_RECIPES))
def test_the_language_models_default_positions_make_no_tensor_on_the_cpu(name):
    """The inference path (eval, generate) leaves position_ids to the decoder, which makes them."""
    cfg, recipe, model = _meta_model(name)
    batch = synthetic_batch(cfg, recipe, model, torch.device("meta"))
    recorder = DeviceRecorder()
    with recorder, torch.no_grad():
        logits = model.lm(batch["input_ids"], attention_mask=batch["attention_mask"])
    assert logits.device.type == "meta"
    assert not recorder.cpu_outputs, f"tensors made on the CPU in the forward: {sorted(set(recorder.cpu_outputs))}"


@pytest.mark.parametrize("name", sorted(TINY_RECIPES))
def test_each_recipe_runs_forward_on_fake_cuda_tensors(name):
    cfg = load_config(None, TINY_RECIPES[name], check_paths=False)
    recipe = recipes.of(cfg)
    tokenizer, _ = dry_run_tokenizer(cfg)
    with FakeTensorMode(), torch.device("cuda"):
        model = recipe.build_model(cfg, tokenizer, load_weights=False)
        recipe.set_stage(model, cfg)
        batch = synthetic_batch(cfg, recipe, model, torch.device("cuda"))
        loss, count, _ = model.batch_loss(batch)
        assert loss.device.type == "cuda" and count == batch["n_targets"]
        # The same model handed one CPU tensor: a device mismatch, not a silent copy.
        batch["position_ids"] = torch.zeros(batch["position_ids"].shape, dtype=torch.long, device="cpu")
        with pytest.raises(Exception, match=re.compile("device", re.IGNORECASE)):
            model.batch_loss(batch)


def test_dry_run_command_prints_counts_and_memory(capsys):
    config = next(c for c in CONFIGS if c.stem == "lavin_llama7b_sqa")
    assert tool_main()([str(config), "--dry-run", "--nproc", "8"]) == 0
    out = capsys.readouterr().out
    assert "3,781,296 trainable" in out and "memory per rank at 8 process(es)" in out
    assert re.search(r"total\s+\d+\.\d\d GiB\s+\d+\.\d\d GiB", out)


def test_a_gpu_asked_for_where_there_is_none_stops_before_any_work(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    run = tmp_path / "run"
    assert tool_main()([f"train.run_dir={json.dumps(str(run))}", "train.device=cuda"]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("config: ")]
    assert len(err) == 1 and err[0].startswith("error: train.device: 'cuda' was asked for, but torch sees no CUDA")
    assert not run.exists()   # nothing generated, nothing written
    assert tool_main()(["train.device=cpu", "--dry-run"]) == 0


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_pure_bf16_dry_runs_on_meta_with_half_the_weights_and_fp32_masters(config):
    """train.precision = "bf16" on meta: the whole step runs with the model in bf16; weights and grads
    take half the bytes of fp32, and the optimizer state gains the fp32 masters of what trains."""
    fp32 = dry_run(load_config(config, check_paths=False))
    bf16 = dry_run(load_config(config, ["train.precision=bf16"], check_paths=False))
    a, b = fp32["bytes_per_rank"], bf16["bytes_per_rank"]
    assert b["weights"] * 2 == a["weights"] and b["grads"] * 2 == a["grads"]
    assert b["optimizer_state"] == a["optimizer_state"] + 4 * bf16["trainable"]
    assert 0 < b["activations"] < a["activations"]
