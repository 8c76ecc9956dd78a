"""Hostile weights (issue 17, W1-W4): wrong dtypes, bad config.json values, index files that point
outside their folder or name a tensor twice, and files that are not safetensors at all. Each is a
WeightsError (or, through a config key, a ConfigError) naming the file and the key, before anything
large is allocated."""
import json
import shutil
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from minilvlm.config import ConfigError
from minilvlm.io import WeightsError, load_safetensors, read_safetensors_header
from minilvlm.recipes import load_config
from minilvlm.weights import from_pretrained
from tests.models import hf_fixtures


@pytest.fixture(scope="module")
def llama_one_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    hf_fixtures.llama(folder, shard="1GB", vocab_size=97, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                      num_key_value_heads=2)
    return folder


@pytest.fixture
def llama(llama_one_file, tmp_path):
    shutil.copytree(llama_one_file, tmp_path / "m")
    return tmp_path / "m"


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.uint8, torch.complex64, torch.float8_e4m3fn,
                                   torch.int64])
def test_w1_a_float_parameter_in_another_kind_of_dtype_is_refused(llama, dtype):
    path = llama / "model.safetensors"
    tensors = load_file(path)
    name = "model.layers.0.mlp.up_proj.weight"
    tensors[name] = tensors[name].to(dtype)
    save_file(tensors, path)
    with pytest.raises(WeightsError, match=rf"{name} is stored as \w+, the model needs float32"):
        from_pretrained(llama)


def test_w1_half_precision_weights_still_load(llama):
    path = llama / "model.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(path).items()}, path)
    assert from_pretrained(llama).embed.weight.dtype == torch.float32


CONFIG_CASES = [
    ([1, 2], "expected a JSON object"), ("llama", "expected a JSON object"), (None, "expected a JSON object"),
    ({"hidden_size": "32"}, "hidden_size must be int"), ({"rope_scaling": "linear"}, "rope_scaling must be dict"),
    ({"hidden_act": ["silu"]}, "hidden_act must be str"), ({"num_attention_heads": 3}, "n_heads=3 is not a multiple"),
    ({"num_hidden_layers": 1e6}, "num_hidden_layers must be int"),
    ({"num_hidden_layers": 1000000}, "n_layers = 1000000: expected 1..1024"),
    ({"num_hidden_layers": 3}, "num_hidden_layers = 3, but the weights in"),
    ({"rms_norm_eps": "1e-6"}, "rms_norm_eps must be int or float"), ({"rms_norm_eps": -1}, "norm_eps = -1"),
    ({"num_key_value_heads": 3}, "is not a multiple of n_kv_heads=3"), ({"hidden_size": 0}, "dim = 0"),
    ({"vocab_size": -5}, "vocab_size = -5"), ({"tie_word_embeddings": "yes"}, "tie_word_embeddings must be bool"),
    ({"model_type": 7}, "model_type must be str"), ({"model_type": ["llama"]}, "model_type must be str"),
    ({"partial_rotary_factor": 0.0}, ""),
]


@pytest.mark.parametrize("change,message", CONFIG_CASES)
def test_w2_a_bad_config_json_is_an_error_naming_the_file(llama, change, message):
    path = llama / "config.json"
    if isinstance(change, dict):
        path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    else:
        path.write_text(json.dumps(change))
    started = time.monotonic()
    if message:
        with pytest.raises(WeightsError, match="config.json") as info:
            from_pretrained(llama)
        assert message in str(info.value)
    else:
        from_pretrained(llama)   # a llama ignores partial_rotary_factor
    assert time.monotonic() - started < 10


def test_w2_invalid_utf8_in_config_json(llama):
    (llama / "config.json").write_bytes(b'{"model_type": "llama", "x": "\xff"}')
    with pytest.raises(WeightsError, match="config.json is not valid JSON"):
        from_pretrained(llama)


def _sharded(tmp_path):
    folder = tmp_path / "sharded"
    hf_fixtures.llama(folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    return folder, index


@pytest.mark.parametrize("weight_map", [[], "x", {"a": 3}, None])
def test_w3_an_index_that_is_not_a_map(tmp_path, weight_map):
    folder, index = _sharded(tmp_path)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(WeightsError, match="index.json"):
        from_pretrained(folder)
    (folder / "model.safetensors.index.json").write_text("[]")
    with pytest.raises(WeightsError, match="expected a JSON object"):
        from_pretrained(folder)


@pytest.mark.parametrize("escape", ["../outside.safetensors", "ABSOLUTE", "sub/../../outside.safetensors"])
def test_w3_shards_outside_the_folder_are_never_read(tmp_path, escape):
    folder, index = _sharded(tmp_path)
    first = sorted(set(index["weight_map"].values()))[0]
    shutil.copy(folder / first, tmp_path / "outside.safetensors")
    name = str(tmp_path / "outside.safetensors") if escape == "ABSOLUTE" else escape
    index["weight_map"] = {k: (name if v == first else v) for k, v in index["weight_map"].items()}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(WeightsError, match="lies outside"):
        from_pretrained(folder)


def test_w3_a_tensor_held_by_two_shards(tmp_path):
    folder, index = _sharded(tmp_path)
    first, second = sorted(set(index["weight_map"].values()))[:2]
    tensors = load_file(folder / second)
    name = next(k for k, v in index["weight_map"].items() if v == first)
    tensors[name] = load_file(folder / first)[name] + 1
    save_file(tensors, folder / second, metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=f"held by two shards.*{name}"):
        from_pretrained(folder)


@pytest.mark.parametrize("content", [b"", b"short", b"root:x:0:0:root:/root:/bin/bash\n" * 4,
                                     (10).to_bytes(8, "little") + b"[1, 2, 3]!",
                                     (30).to_bytes(8, "little") + b'{"a": {"dtype": "F32", "shape": [4], '
                                                                  b'"data_offsets": [0, 99]}}'])
def test_w4_files_that_are_not_safetensors_name_the_file_and_the_key(tmp_path, content):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match="weights.safetensors"):
        read_safetensors_header(path)
    with pytest.raises(WeightsError, match=r"model.lm_weights = '.*weights.safetensors'"):
        load_safetensors(path, "model.lm_weights")


def test_w4_a_text_file_as_lm_weights_names_the_config_key(tmp_path):
    from minilvlm.recipes import of
    from tests.recipes.test_eve import TOKENIZER
    cfg = load_config(None, ["model.lm_weights=/etc/passwd", "model.decoder.dim=16", "model.decoder.n_heads=2",
                             "model.decoder.n_layers=1", "model.decoder.mlp_dim=16"])
    with pytest.raises((WeightsError, ConfigError), match=r"model.lm_weights = '/etc/passwd': not a readable "
                                                          r"safetensors file"):
        of(cfg).build_model(cfg, TOKENIZER)
