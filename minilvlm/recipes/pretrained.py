"""Pretrained weights named in a run config, loaded into a freshly built model's parts: a Hugging
Face folder (through minilvlm.weights and its key maps; the tower or the LM of a LLaVA folder too) or
one of our own .safetensors files (a run's checkpoint, whose tensors sit under the part's prefix,
e.g. `vision.` for a llava run's tower). `model.init_from` also takes a whole Hugging Face LLaVA
folder. Every problem is a ConfigError naming the config key, the path and what to do.

The vocabulary rule of every recipe (`decoder_config`): the LM has one embedding row per tokenizer
id, and at least as many as its checkpoint, whose padded rows (Qwen2, Phi-2) load as they are; ids
the tokenizer adds (`<image>`) get new rows, initialised to the mean of the checkpoint's rows."""
import dataclasses
from pathlib import Path

from minilvlm.config import ConfigError
from minilvlm.io import dtype_problems, load_safetensors
from minilvlm.models.llava import LLaVA
from minilvlm.models.state import mismatch
from minilvlm.weights import (
    ARCHITECTURES,
    DECODER_TYPES,
    VISION_TYPES,
    VOCAB_TENSORS,
    WeightsError,
    load_state_dict_into,
    read_config,
)
from minilvlm.weights.llava import is_llava, load_llava, load_part, read_llava

# Config fields that do not shape the weights: the tokenizer sets the vocabulary (the tensors are
# grown to it) and the run its context length.
_RUNTIME_FIELDS = ("vocab_size", "max_seq_len")


def decoder_config(cfg, tokenizer):
    """cfg.model.decoder with its vocabulary sized for the tokenizer: max(tokenizer ids, the
    configured rows, which are the checkpoint's when read from its folder)."""
    d = cfg.model.decoder
    base = getattr(tokenizer, "base_vocab_size", 0)   # the dry run's stand-in has only vocab_size
    if d.vocab_size and base > d.vocab_size:
        raise ConfigError(f"data.tokenizer: the tokenizer's vocabulary has {base} ids before its added tokens, more "
                          f"than the LM's {d.vocab_size} embedding rows; is it the LM's own tokenizer?")
    return dataclasses.replace(d, vocab_size=max(tokenizer.vocab_size, d.vocab_size))


def _check_exists(path, key):
    if not path.exists():
        raise ConfigError(f"{key} = '{path}': no such file or folder; set it to a Hugging Face model folder or "
                          f"a .safetensors file (absolute, or relative to {Path.cwd()})")


def _folder_config(folder, kind):
    """(model_type, our config) of a Hugging Face folder, the tower's or the LM's for a LLaVA folder."""
    if not is_llava(folder):
        return read_config(folder)
    info = read_llava(folder)
    return (info.vision_type, info.vision) if kind == "vision" else (info.text_type, info.decoder)


def _load_hf(module, folder, key, kind):
    kinds = VISION_TYPES if kind == "vision" else DECODER_TYPES
    try:
        model_type, config = _folder_config(folder, kind)
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
    if kind == "decoder" and module.config.vocab_size < config.vocab_size:
        raise ConfigError(f"{key} = '{folder}' has {config.vocab_size} embedding rows, more than the model's "
                          f"{module.config.vocab_size}; leave model.decoder.vocab_size out of the config")
    _, _, key_map, ignored = ARCHITECTURES[model_type]
    try:
        if is_llava(folder):
            load_part(module, folder, "vision" if kind == "vision" else "lm")
        else:
            load_state_dict_into(module, folder, key_map, ignored, grow=VOCAB_TENSORS if kind == "decoder" else ())
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
        _load_hf(module, path, key, kind)
    else:
        _load_ours(module, path, key, "vision." if kind == "vision" else "lm.")
    return module


def load_previous_stage(model, path, key="model.init_from", dropped=()):
    """A whole model from an earlier run's checkpoint (the previous training stage), or from a Hugging
    Face LLaVA folder (a llava model). Tensors under the `dropped` prefixes that this stage's model
    lacks (EVE's aligner in instruction tuning) are left out; any other difference is an error."""
    path = Path(path)
    _check_exists(path, key)
    if path.is_dir() and (path / "config.json").is_file():
        if not isinstance(model, LLaVA) or not is_llava(path):
            raise ConfigError(f"{key} = '{path}': a Hugging Face folder there must be a LLaVA folder "
                              f"(LlavaForConditionalGeneration), and it starts a llava-recipe model")
        try:
            return load_llava(model, path)
        except WeightsError as err:
            raise ConfigError(f"{key}: {err}") from None
    file, state = _read_ours(path, key)
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if k in expected or not k.startswith(tuple(dropped))}
    _assign(model, state, key, file)
    return model
