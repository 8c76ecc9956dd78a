"""Every config value checked up front (issue 16; issue 17 K1-K3): the test walks every field of the
run config and sets it to a bad value of each kind (wrong type, negative, zero, huge, NaN, infinite,
an unknown word, an empty string or list); each must end in a ConfigError that names the key, within
10 seconds, unless the value is one the field legitimately takes (listed below, with why)."""
import dataclasses
import json
import math
import time
import typing

import pytest

from minilvlm.config import ConfigError, RunConfig
from minilvlm.recipes import load_config

# (key, value) pairs that are valid settings, not mistakes.
LEGITIMATE = {
    ("model.feature_layer", -1): "the last hidden state",
    ("model.eve.image_size", 0): "0 means model.vision.image_size",
    ("model.eve.align_weight", 0.0): "no alignment term",
    ("model.mma.scale", -1.0): "a negative adapter scale is a valid (if odd) setting",
    ("data.demo_seed", 0): "a seed", ("train.seed", 0): "a seed",
    ("data.demo_mc_fraction", 0.0): "no multiple choice",
    ("optim.min_lr", 0.0): "decay to zero", ("optim.weight_decay", 0.0): "no decay", ("optim.clip", 0.0): "no clipping",
    ("optim.warmup_steps", 0): "no warmup", ("optim.warmup_epochs", 0.0): "no warmup",
    ("train.vision_pretrain_steps", 0): "off", ("train.peak_tflops", 0.0): "from the table",
    ("train.threads", 0): "torch's default", ("train.log_every", 0): "off", ("train.eval_every", 0): "off",
    ("train.ckpt_every", 0): "off", ("train.stop_at", 0): "to the end", ("eval.limit", 0): "all records",
    ("eval.samples", 0): "print none", ("data.num_workers", 0): "in-process loading",
    ("data.eval_file", ""): "none", ("data.tokenizer", ""): "built from the data", ("data.image_root", ""): "default",
    ("model.vision_weights", ""): "from scratch", ("model.lm_weights", ""): "from scratch",
    ("model.init_from", ""): "from scratch", ("model.mma.base_checkpoint", ""): "only read by the mma recipe",
    ("model.mma.vision_weights", ""): "only read by the mma recipe", ("model.mma.lm_weights", ""): "idem",
    ("model.mma.text_only_prefix", ""): "no prefix", ("model.mma.vision_layers", "[]"): "every 4th block",
    ("model.eve.align_layers", "[]"): "every 4th layer from the last", ("data.mixture", "[]"): "no mixture",
    ("model.decoder.vocab_size", 0): "taken from the tokenizer",
    ("model.feature_layer", 0): "the embeddings", ("model.mma.dropout", 0.0): "no dropout",
    ("model.mma.scale", 0.0): "adapters that add nothing (an ablation)",
    ("optim.lr", 0.0): "a run that changes nothing (a round trip through the trainer)",
    ("model.lora.rank", 0): "LoRA off", ("model.lora.dropout", 0.0): "no dropout",
    ("model.lora.targets", '["x"]'): "a pattern; read only when LoRA is on, where the build says what it matched",
}
# Fields where a huge value is a long or odd run, not a broken one: step counts and intervals (huge:
# never, or a long run), learning rates and other scales (a run that diverges is stopped by
# train.nonfinite_limit), the peak FLOP/s of a device.
LARGE_OK = {"eval.limit", "optim.restart_steps", "optim.warmup_steps", "optim.warmup_epochs", "train.ckpt_every",
            "train.eval_every", "train.log_every", "train.nonfinite_limit", "train.steps", "train.vision_pretrain_steps",
            "optim.lr", "optim.projector_lr", "optim.vision_lr", "optim.min_lr", "optim.clip", "model.mma.temperature",
            "model.eve.align_weight", "train.peak_tflops", "model.lora.alpha"}
FREE_TEXT = {"model.mma.text_only_prefix", "train.run_dir"}   # any non-empty string is a valid value
MMA_ONLY = {"model.mma.base_checkpoint", "model.mma.vision_weights", "model.mma.lm_weights", "model.mma.hidden",
            "model.mma.groups", "model.mma.scale", "model.mma.temperature", "model.mma.dropout",
            "model.mma.vision_layers", "model.mma.visual_hidden", "model.mma.text_only_prefix"}
EVE_ONLY = {"model.eve.align_layers"}


def leaves(obj, prefix=""):
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from leaves(value, key + ".")
        else:
            yield key, hints[f.name], value


def bad_values(kind, current):
    base = typing.get_origin(kind)
    options = typing.get_args(kind) if base in (typing.Union, __import__("types").UnionType) else (kind,)
    if bool in options:
        return ["yes", 1]
    if int in options:
        return ["x", 1.5, True, -1, 0, -10**9, 10**12, [1]]
    if float in options:
        return ["x", True, -1.0, 0.0, math.nan, math.inf, -math.inf, [1.0], 1e300]
    if str in options:
        return [7, [], "", "no-such-value-zz", "x\0y"]
    if isinstance(current, dict):
        return ["x", {"train": -1}, {"train": "x"}, {"train": 10**9}]
    if isinstance(current, tuple):
        return ["x", [1], ["a", "b", "c"], [math.nan, 0, 0], [1, 1, 1, 1]]
    return ["x", [[]], ["x"], [{}], [-5], [10**9]]


def toml(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return json.dumps(value)


def recipe_for(key):
    if key in MMA_ONLY:
        return ["model.recipe=mma", "model.vision.n_layers=4", "model.mma.base_checkpoint=\"/\""]
    if key in EVE_ONLY:
        return ["model.recipe=eve", "model.eve.random_teacher=true"]
    return []


CASES = [(key, value) for key, kind, current in leaves(RunConfig()) for value in bad_values(kind, current)]


def test_the_walk_covers_every_field():
    keys = {key for key, _, _ in leaves(RunConfig())}
    assert len(keys) > 80 and {k for k, _ in CASES} == keys
    assert len(CASES) > 500


@pytest.mark.parametrize("key,value", CASES, ids=[f"{k}={v!r}"[:60] for k, v in CASES])
def test_every_field_with_a_bad_value_is_a_clear_error(key, value, tmp_path):
    overrides = recipe_for(key) + [f"train.run_dir={json.dumps(str(tmp_path / 'run'))}", f"{key}={toml(value)}"]
    started = time.monotonic()
    try:
        load_config(None, overrides)
    except ConfigError as err:
        section, name = key.rsplit(".", 1)
        assert key in str(err) or (section in str(err) and name in str(err)), str(err)
        assert "\n" not in str(err)
    else:
        legit = ((key, value if not isinstance(value, list) else toml(value)) in LEGITIMATE or (key in FREE_TEXT and isinstance(value, str) and value)
                 or (key in LARGE_OK and value in (10**12, 1e300)))
        assert legit, f"{key} = {value!r} was accepted"
    assert time.monotonic() - started < 10
