"""A fresh run config completed from what it names (`minilvlm.recipes.load_config` runs this before
the checks), so that a run starts from paths alone:

- **architecture**: `model.vision` and `model.decoder` are read from the config.json of the Hugging
  Face folders in `model.vision_weights` and `model.lm_weights` (`model.mma.*` for the mma recipe);
  a LLaVA folder in `model.init_from` gives both, with `model.projector` and `model.feature_layer`.
  A value that the config also sets and that disagrees is an error listing every difference at once
  (`model.decoder.max_seq_len` alone may differ: it is the run's context, not a weight shape);
- **tokenizer**: `data.tokenizer` defaults to the LM folder's tokenizer when it has one;
- **template**: `data.template = "auto"` takes the base run's (a checkpoint of ours in
  `model.init_from` or `model.mma.base_checkpoint`), else picks from the tokenizer's
  chat_template, else the LM's family (LLaMA/Vicuna: vicuna_v1, Qwen2: chatml, Phi: phi), else
  chatml (the demo's);
- **paths**: made absolute, so the run's saved config.json reads the same from any folder.

Each decision is returned as a note ("model.vision: from DIR/config.json ..."): tools/train.py
prints them, and the dry run shows the resolved sections this way."""
import dataclasses
import json
import os
from pathlib import Path

from minilvlm.config import ConfigError
from minilvlm.weights import DECODER_TYPES, VISION_TYPES, WeightsError, read_config
from minilvlm.weights.llava import is_llava, read_llava

_FAMILY_TEMPLATES = {"llama": "vicuna_v1", "qwen2": "chatml", "phi": "phi"}
_TOKENIZER_CLASSES = (("Llama", "vicuna_v1"), ("Qwen2", "chatml"), ("CodeGen", "phi"), ("Phi", "phi"))
_RUNTIME_FIELDS = ("max_seq_len",)
_PATHS = ("model.vision_weights", "model.lm_weights", "model.init_from", "model.mma.base_checkpoint",
          "model.mma.vision_weights", "model.mma.lm_weights", "data.tokenizer", "data.image_root", "data.eval_file")


def _get(cfg, dotted):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _set(cfg, dotted, value):
    head, _, last = dotted.rpartition(".")
    setattr(_get(cfg, head), last, value)


def _absolute_paths(cfg):
    for key in _PATHS + (() if cfg.data.dataset == "demo" else ("data.dataset",)):
        value = _get(cfg, key)
        if value:
            _set(cfg, key, os.path.abspath(os.path.expanduser(value)))


def _hf_folder(path):
    return bool(path) and (Path(path) / "config.json").is_file()


def _weight_keys(cfg):
    """(config key naming the tower's weights, the LM's) for the recipe."""
    if cfg.model.recipe == "mma":
        return "model.mma.vision_weights", "model.mma.lm_weights"
    return "model.vision_weights", "model.lm_weights"


def _sources(cfg):
    """[(section, values, model_type, where)] read from the Hugging Face folders the config names."""
    found = []
    vision_key, lm_key = _weight_keys(cfg)
    for key, section, part in ((vision_key, "model.vision", "vision"), (lm_key, "model.decoder", "decoder")):
        folder = _get(cfg, key)
        if not _hf_folder(folder):
            continue
        where = f"{key} = {folder}"
        if is_llava(folder):
            info = read_llava(folder)
            config, model_type = (info.vision, info.vision_type) if part == "vision" else (info.decoder, info.text_type)
        else:
            model_type, config = read_config(folder)
        kinds = VISION_TYPES if part == "vision" else DECODER_TYPES
        if model_type not in kinds:
            raise ConfigError(f"{key} = '{folder}' holds a {model_type!r} model; expected one of {', '.join(kinds)}")
        found.append((section, config, model_type, where))
    folder = cfg.model.init_from
    if _hf_folder(folder):
        if cfg.model.recipe != "llava" or not is_llava(folder):
            raise ConfigError(f"model.init_from = {folder}: a Hugging Face folder there must be a LLaVA "
                              f"(LlavaForConditionalGeneration) folder, and it starts a llava-recipe run; give a "
                              f"tower or an LM folder as model.vision_weights / model.lm_weights instead")
        info, where = read_llava(folder), f"model.init_from = {folder}"
        found += [("model.vision", info.vision, info.vision_type, where),
                  ("model.decoder", info.decoder, info.text_type, where),
                  ("model.projector", info.projector, "llava", where),
                  ("model.feature_layer", info.feature_layer, "llava", where)]
    return found


def _differences(cfg, section, value, where, taken):
    """'key: config X vs folder Y' for each explicitly set value that disagrees with the folder's
    (and for two folders that disagree with each other)."""
    fields = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else {"": value}
    out = []
    for name, theirs in fields.items():
        key = f"{section}.{name}" if name else section
        if name in _RUNTIME_FIELDS:
            continue
        if key in taken and taken[key][0] != theirs:
            out.append(f"{key}: {taken[key][1]} has {taken[key][0]!r} but {where} has {theirs!r}")
        elif key in getattr(cfg, "set_keys", ()) and _get(cfg, key) != theirs:
            out.append(f"{key}: the config sets {_get(cfg, key)!r} but {where} has {theirs!r}")
        taken.setdefault(key, (theirs, where))
    return out


def _architecture(cfg, notes):
    differences, taken = [], {}
    found = _sources(cfg)
    for section, value, _, where in found:
        differences += _differences(cfg, section, value, where, taken)
    if differences:
        raise ConfigError("the config disagrees with the weights it names (" + str(len(differences)) + "):\n  "
                          + "\n  ".join(differences) + "\nleave these keys out: they are read from the weights")
    for section, value, model_type, where in found:
        if dataclasses.is_dataclass(value):
            value = dataclasses.replace(value)
            for name in _RUNTIME_FIELDS:
                if hasattr(value, name) and f"{section}.{name}" in getattr(cfg, "set_keys", ()):
                    setattr(value, name, getattr(_get(cfg, section), name))
            shown = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(value).items())
        else:
            shown = repr(value)
        _set(cfg, section, value)
        notes.append(f"{section}: from {where} ({model_type}): {shown}")


def _lm_folder(cfg):
    """The Hugging Face folder the LM comes from, or None."""
    _, lm_key = _weight_keys(cfg)
    for folder in (_get(cfg, lm_key), cfg.model.init_from):
        if _hf_folder(folder):
            return folder
    return None


def _default_tokenizer(cfg, notes):
    folder = _lm_folder(cfg)
    if not cfg.data.tokenizer and folder and (Path(folder) / "tokenizer.json").is_file():
        cfg.data.tokenizer = folder
        notes.append(f"data.tokenizer: the LM folder's, {folder}")


def _tokenizer_config(cfg):
    """(tokenizer_config.json as a dict, the folder's chat template text or None)."""
    if not cfg.data.tokenizer:
        return {}, None
    path = Path(cfg.data.tokenizer)
    folder = path if path.is_dir() else path.parent
    config = {}
    if (folder / "tokenizer_config.json").is_file():
        try:
            config = json.loads((folder / "tokenizer_config.json").read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"data.tokenizer: {folder / 'tokenizer_config.json'} is not valid JSON: {err}") from None
    template = config.get("chat_template")
    if isinstance(template, list):   # named templates: [{"name": "default", "template": ...}, ...]
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if template is None and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text()
    return config, template


def _recognise(template, eos):
    """Which of our templates a Jinja chat template writes, by its markup, or None."""
    if "<|im_start|>" in template:
        return "chatml"
    if "USER:" in template and "ASSISTANT:" in template:
        return "phi" if "<|endoftext|>" in template or eos == "<|endoftext|>" else "vicuna_v1"
    return None


def _lm_family(cfg):
    folder = _lm_folder(cfg)
    if folder is None:
        return None
    try:
        return read_llava(folder).text_type if is_llava(folder) else read_config(folder)[0]
    except WeightsError:
        return None


def _base_run_template(cfg):
    """The template of the minilvlm run whose checkpoint model.init_from (or the mma recipe's
    base_checkpoint) names, from its state.json, or None."""
    for path in (cfg.model.init_from, cfg.model.mma.base_checkpoint):
        if not path:
            continue
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        try:
            template = json.loads((folder / "state.json").read_text())["config"]["data"]["template"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if template != "auto":
            return template, f"the base run {folder} was trained with it"
    return None


def pick_template(cfg):
    """(template, why) for data.template = "auto"."""
    base = _base_run_template(cfg)
    if base:
        return base
    config, template = _tokenizer_config(cfg)
    eos = config.get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    if template:
        name = _recognise(template, eos)
        if name:
            return name, f"the tokenizer's chat_template writes {name}'s markup"
    family = _lm_family(cfg)
    if family in _FAMILY_TEMPLATES:
        return _FAMILY_TEMPLATES[family], f"the LM is {family}"
    tokenizer_class = str(config.get("tokenizer_class", ""))
    for prefix, name in _TOKENIZER_CLASSES:
        if tokenizer_class.startswith(prefix):
            return name, f"the tokenizer is a {tokenizer_class}"
    return "chatml", "no chat_template or LM family to go by (the demo's template)"


def resolve(cfg, notes=None):
    """Complete cfg in place from the folders it names (see the module docstring); returns it.
    notes: a list that receives one line per decision."""
    notes = [] if notes is None else notes
    _absolute_paths(cfg)
    try:
        _architecture(cfg, notes)
        _default_tokenizer(cfg, notes)
    except WeightsError as err:
        raise ConfigError(str(err)) from None
    if cfg.data.template == "auto":
        cfg.data.template, why = pick_template(cfg)
        notes.append(f"data.template: auto -> {cfg.data.template} ({why})")
    return cfg
