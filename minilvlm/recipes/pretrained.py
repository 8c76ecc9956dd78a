"""Pretrained weights named in a run config, loaded into a freshly built model's parts: a Hugging
Face folder (through minilvlm.weights and its key maps) or one of our own .safetensors files (a
run's checkpoint, whose tensors sit under the part's prefix, e.g. `vision.` for a llava run's tower).
Every problem is a ConfigError naming the config key, the path and what to do."""
from pathlib import Path

from minilvlm.config import ConfigError
from minilvlm.io import dtype_problems, load_safetensors
from minilvlm.models.state import mismatch
from minilvlm.weights import (
    ARCHITECTURES,
    WeightsError,
    load_state_dict_into,
    read_config,
)

_VISION_TYPES = ("clip_vision_model", "siglip_vision_model")
_DECODER_TYPES = ("llama", "qwen2", "phi")
# Config fields that do not shape the weights: the tokenizer sets the vocabulary (its size is checked
# with the tensors) and the run its context length.
_RUNTIME_FIELDS = ("vocab_size", "max_seq_len")


def _check_exists(path, key):
    if not path.exists():
        raise ConfigError(f"{key} = '{path}': no such file or folder; set it to a Hugging Face model folder or "
                          f"a .safetensors file (absolute, or relative to {Path.cwd()})")


def _load_hf(module, folder, key, kinds):
    try:
        model_type, config = read_config(folder)
    except WeightsError as err:
        raise ConfigError(f"{key}: {err}") from None
    if model_type not in kinds:
        raise ConfigError(f"{key} = '{folder}' holds a {model_type!r} model; expected one of {', '.join(kinds)}")
    differ = {name: (getattr(config, name), getattr(module.config, name)) for name in vars(config)
              if name not in _RUNTIME_FIELDS and getattr(config, name) != getattr(module.config, name)}
    if differ:
        listed = ", ".join(f"{n}: checkpoint {a!r} vs config {b!r}" for n, (a, b) in sorted(differ.items()))
        raise ConfigError(f"{key} = '{folder}' does not match the configured architecture ({listed}); "
                          f"make the config section match the checkpoint's config.json")
    _, _, key_map, ignored = ARCHITECTURES[model_type]
    try:
        load_state_dict_into(module, folder, key_map, ignored)
    except WeightsError as err:
        raise ConfigError(f"{key}: {err}") from None


def _read_ours(path, key):
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"{key} = '{path}': expected a .safetensors file, a checkpoint folder holding "
                          f"model.safetensors, or a Hugging Face folder with config.json")
    return file, load_safetensors(file, key)


def _load_ours(module, path, key, prefix):
    file, state = _read_ours(path, key)
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    _assign(module, state, key, file, f" (keys read under '{prefix}' when present)")


def _assign(module, state, key, file, note=""):
    problems = mismatch(module.state_dict(), state) or dtype_problems(state, module.state_dict(), "dtypes")
    if problems:
        raise ConfigError(f"{key} = '{file}' does not fit the configured {type(module).__name__}{note}: {problems}; "
                          f"does the config section match the run that saved it?")
    module.load_state_dict(state, strict=True)


def load_pretrained(module, path, key, kind):
    """Load `path` into module (kind "vision": a VisionTransformer, "decoder": a Decoder)."""
    path = Path(path)
    _check_exists(path, key)
    if path.is_dir() and (path / "config.json").is_file():
        _load_hf(module, path, key, _VISION_TYPES if kind == "vision" else _DECODER_TYPES)
    else:
        _load_ours(module, path, key, "vision." if kind == "vision" else "lm.")
    return module


def load_previous_stage(model, path, key="model.init_from", dropped=()):
    """A whole model from an earlier run's checkpoint (the previous training stage). Tensors under
    the `dropped` prefixes that this stage's model lacks (EVE's aligner in instruction tuning) are
    left out; any other difference is an error."""
    path = Path(path)
    _check_exists(path, key)
    file, state = _read_ours(path, key)
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if k in expected or not k.startswith(tuple(dropped))}
    _assign(model, state, key, file)
    return model
