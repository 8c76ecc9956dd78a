"""The fuzz suite (issue 17): seeded random records, images, safetensors files, config.json files, run
configs and damaged checkpoint folders (tests/fuzz/targets.py). Every outcome must be a valid result,
a counted skip or a project error; never a crash, a hang or a silent drop. The default run takes a
few hundred cases per target (seconds); `pytest -m fuzz` runs the long campaign."""
import json

import pytest

from tests.fuzz import targets
from tests.fuzz.harness import Campaign
from tests.test_weights_hostile import llama_one_file  # noqa: F401  (a fixture: a Llama folder, one file)
from tests.tools_main import tool_main
from tests.tiny_run import TINY_MODEL

FAST = {"records": 300, "images": 300, "safetensors": 300, "hf_config": 60, "config": 300, "checkpoints": 15}
LONG = {"records": 12000, "images": 10000, "safetensors": 10000, "hf_config": 2000, "config": 15000,
        "checkpoints": 600}


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("fuzz_run") / "run"
    args = TINY_MODEL + ["data.demo_sizes={train = 32, val = 4, test = 4}", "train.global_batch=8",
                         "train.micro_batch=8", "train.steps=6", "train.stop_at=4", "train.ckpt_every=2",
                         "train.eval_every=0", "train.vision_pretrain_steps=0", "train.threads=1",
                         f"train.run_dir={json.dumps(str(run))}"]
    assert tool_main("train")(args) == 0
    return run


def make(name, folder, hf_llama=None, run=None):
    if name == "hf_config":
        return targets.hf_config_target(folder, hf_llama)
    if name == "checkpoints":
        return targets.checkpoint_target(folder, run)
    return getattr(targets, f"{name}_target")(folder)


def campaign(name, n, seed, tmp_path, hf_llama, stopped_run):
    expected, case = make(name, tmp_path, hf_llama, stopped_run)
    run = Campaign(name, expected, seed=seed)
    took = run.run(case, n)
    print(f"fuzz {name}: {n} cases in {took:.1f} s, {len(run.failures)} failures, outcomes {run.outcomes}")
    run.check()
    if expected:   # the generators reach both sides: inputs that work and inputs that are refused
        assert run.outcomes["valid"] > 0 and run.outcomes["refused"] > 0, run.outcomes


@pytest.mark.parametrize("name", sorted(FAST))
def test_fuzz(name, tmp_path, llama_one_file, stopped_run):
    campaign(name, FAST[name], 1, tmp_path, llama_one_file, stopped_run)


@pytest.mark.fuzz
@pytest.mark.parametrize("name", sorted(LONG))
def test_fuzz_campaign(name, tmp_path, llama_one_file, stopped_run):
    campaign(name, LONG[name], 2, tmp_path, llama_one_file, stopped_run)
