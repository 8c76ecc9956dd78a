"""Hugging Face LLaVA folders in (LlavaForConditionalGeneration): config.json's `vision_config`,
`text_config` and LLaVA settings mapped to ours, and the tensors in either key layout that
transformers has used:

  legacy    vision_tower.*, multi_modal_projector.*, language_model.model.*, language_model.lm_head.*
            (what transformers 4.57's save_pretrained writes, and what our export writes)
  modules   model.vision_tower.*, model.multi_modal_projector.*, model.language_model.*, lm_head.*
            (the module names since transformers 4.52: its state_dict(), and newer releases' files)

A setting we cannot represent (a list of feature layers, a feature strategy that keeps CLIP's class
token, a projector activation other than gelu or linear, a projector without biases) is an error that
names it. Our names -> theirs is also what the export writes (minilvlm/export/hf_folder.py)."""
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from minilvlm.models.decoder import DecoderConfig
from minilvlm.models.vision import VisionConfig
from minilvlm.weights import (
    ARCHITECTURES,
    DECODER_TYPES,
    VISION_TYPES,
    VOCAB_TENSORS,
    by_key_map,
    config_of,
    load_state_dict_into,
    open_checkpoint,
    read_json,
)
from minilvlm.io import WeightsError

# Our projector -> transformers' projector_hidden_act, and our projector's parameter names ->
# LlavaMultiModalProjector's (linear_1 -> act -> linear_2; our single Linear is that with the
# identity activation and an identity linear_2).
PROJECTOR_ACTS = {"mlp2x_gelu": "gelu", "linear": "linear"}
PROJECTOR_KEYS = {"mlp2x_gelu": {"0": "linear_1", "2": "linear_2"}, "linear": {"": "linear_1"}}
# Each part's prefix in the two layouts, before the names of its own architecture's key map.
_LEGACY = {"vision": "vision_tower.", "projector": "multi_modal_projector.", "lm": "language_model."}
_MODULES = {"vision": "model.vision_tower.", "projector": "model.multi_modal_projector.", "lm": "model.language_model."}


@dataclass
class LlavaFolder:
    """What a LLaVA folder's config.json says, in our terms."""
    folder: Path
    vision_type: str
    vision: VisionConfig
    text_type: str
    decoder: DecoderConfig
    projector: str                 # "mlp2x_gelu" | "linear"
    feature_layer: int
    image_token_id: int


def is_llava(folder):
    """Whether folder/config.json describes a LlavaForConditionalGeneration."""
    path = Path(folder) / "config.json"
    return path.is_file() and read_json(path).get("model_type") == "llava"


def _require(ok, where, message):
    if not ok:
        raise WeightsError(f"{where}: {message}")


def read_llava(folder):
    """The LlavaFolder of folder/config.json; WeightsError naming any setting we cannot represent."""
    folder = Path(folder)
    where = str(folder / "config.json")
    cfg = read_json(folder / "config.json")
    _require(cfg.get("model_type") == "llava", where, f"model_type {cfg.get('model_type')!r} is not 'llava'")
    vision_cfg, text_cfg = cfg.get("vision_config") or {}, cfg.get("text_config") or {}
    vision_type = vision_cfg.get("model_type", "clip_vision_model")
    text_type = text_cfg.get("model_type", "llama")
    _require(vision_type in VISION_TYPES, where, f"vision_config.model_type {vision_type!r} is not supported; "
                                                 f"supported: {', '.join(VISION_TYPES)}")
    _require(text_type in DECODER_TYPES, where, f"text_config.model_type {text_type!r} is not supported; "
                                                f"supported: {', '.join(DECODER_TYPES)}")
    vision = config_of(vision_type, vision_cfg, where + " (vision_config)", folder)
    decoder = config_of(text_type, text_cfg, where + " (text_config)")
    if text_type == "phi":   # LLaVA's lm_head has no bias, whatever the text model
        decoder = dataclasses.replace(decoder, lm_head_bias=False)
    layer = cfg.get("vision_feature_layer", -2)
    _require(isinstance(layer, int) and not isinstance(layer, bool), where,
             f"vision_feature_layer {layer!r}: only one layer can be read (model.feature_layer is one index)")
    _require(-vision.n_layers - 1 <= layer <= vision.n_layers, where,
             f"vision_feature_layer {layer} is out of range for a tower of {vision.n_layers + 1} hidden states")
    strategy = cfg.get("vision_feature_select_strategy", "default")
    wanted = "default" if vision.class_token else "full"
    _require(strategy == wanted, where,
             f"vision_feature_select_strategy {strategy!r} with a {vision_type} tower cannot be represented: the "
             f"projector reads the patch tokens without a class token, which is {wanted!r} for this tower")
    act = cfg.get("projector_hidden_act", "gelu")
    projectors = {v: k for k, v in PROJECTOR_ACTS.items()}
    _require(act in projectors, where, f"projector_hidden_act {act!r} cannot be represented; supported: "
                                       f"{', '.join(sorted(projectors))}")
    _require(cfg.get("multimodal_projector_bias", True), where,
             "multimodal_projector_bias false cannot be represented: our projector layers have biases")
    token = cfg.get("image_token_index", cfg.get("image_token_id", 32000))
    return LlavaFolder(folder, vision_type, vision, text_type, decoder, projectors[act], layer, token)


def layout_of(where, folder):
    """"legacy" or "modules": the key layout of a LLaVA checkpoint (see the module docstring)."""
    if any(k.startswith(_MODULES["lm"]) for k in where):
        return "modules"
    if any(k.startswith(_LEGACY["lm"]) for k in where):
        return "legacy"
    raise WeightsError(f"{folder}: a LLaVA checkpoint needs its language model's tensors under "
                       f"'{_LEGACY['lm']}' or '{_MODULES['lm']}'; found neither")


def in_layout(legacy_name, layout):
    """A legacy-layout checkpoint name in `layout`. The modules layout is also the module path that
    transformers (and peft) see: language_model.model.X -> model.language_model.X."""
    if layout == "legacy":
        return legacy_name
    if legacy_name.startswith("language_model.model."):
        return _MODULES["lm"] + legacy_name[len("language_model.model."):]
    if legacy_name.startswith("language_model."):
        return legacy_name[len("language_model."):]
    return "model." + legacy_name


def part_renamer(part, model_type, layout="legacy"):
    """Our name inside a part ("vision": the tower, "lm": the decoder) -> the checkpoint's, or None."""
    legacy = by_key_map(ARCHITECTURES[model_type][2], _LEGACY[part])

    def rename(name):
        hf = legacy(name)
        return None if hf is None else in_layout(hf, layout)
    return rename


def projector_renamer(projector, layout="legacy"):
    """Our projector's parameter name (0.weight, weight, ...) -> the checkpoint's, or None."""
    names = PROJECTOR_KEYS[projector]

    def rename(name):
        module, _, suffix = name.rpartition(".")
        hf = names.get(module)
        return None if hf is None else in_layout(f"{_LEGACY['projector']}{hf}.{suffix}", layout)
    return rename


class _Alias:
    """A checkpoint tensor seen under its name inside its part (the shard reads it by its own name)."""

    def __init__(self, shard, key):
        self.shard, self.key = shard, key

    def shape(self, _name):
        return self.shard.shape(self.key)

    def entry(self, _name):
        return self.shard.entry(self.key)

    def tensor(self, _name, dtype=None):
        return self.shard.tensor(self.key, dtype)


def _relative(key, part, layout):
    """A checkpoint key's name inside `part` as its own architecture names it, or None."""
    if layout == "modules" and part == "lm" and key.startswith("lm_head."):
        return key
    prefix = (_LEGACY if layout == "legacy" else _MODULES)[part]
    if not key.startswith(prefix):
        return None
    rest = key[len(prefix):]
    return "model." + rest if layout == "modules" and part == "lm" else rest


def part_view(where, part, layout):
    """{name inside the part: tensor} of a LLaVA checkpoint's part ("vision", "projector", "lm")."""
    view = {}
    for key, shard in where.items():
        name = _relative(key, part, layout)
        if name is not None:
            view[name] = _Alias(shard, key)
    return view


def load_part(module, folder, part, dtype=None):
    """The tower (part "vision", into our VisionTransformer) or the LM (part "lm", into our Decoder,
    its vocabulary grown to the module's rows) of a LLaVA folder."""
    info = read_llava(folder)
    where = open_checkpoint(folder)
    model_type = info.vision_type if part == "vision" else info.text_type
    _, _, key_map, ignored = ARCHITECTURES[model_type]
    view = part_view(where, part, layout_of(where, folder))
    grow = VOCAB_TENSORS if part == "lm" else ()
    return load_state_dict_into(module, folder, key_map, ignored, dtype, grow, tensors=view)


def _projector_state(view, projector, folder):
    """Our projector's tensors from LlavaMultiModalProjector's. The linear projector is HF's two
    layers with the identity activation folded into one: W = W2 W1, b = W2 b1 + b2 (our export writes
    an identity linear_2, so its own folders come back exactly)."""
    needed = ("linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias")
    missing = [n for n in needed if n not in view]
    if missing or len(view) != len(needed):
        raise WeightsError(f"{folder}: the projector needs exactly {', '.join(needed)} under multi_modal_projector; "
                           f"missing {missing}, unexpected {sorted(set(view) - set(needed))}")
    t = {n: view[n].tensor(n) for n in needed}
    if projector == "mlp2x_gelu":
        return {"0.weight": t["linear_1.weight"], "0.bias": t["linear_1.bias"],
                "2.weight": t["linear_2.weight"], "2.bias": t["linear_2.bias"]}
    w2 = t["linear_2.weight"].double()
    return {"weight": (w2 @ t["linear_1.weight"].double()).to(t["linear_1.weight"].dtype),
            "bias": (w2 @ t["linear_1.bias"].double() + t["linear_2.bias"].double()).to(t["linear_1.bias"].dtype)}


def load_llava(model, folder):
    """Fill our LLaVA (tower, projector, LM) from a LLaVA folder in either layout. The model's
    configs must be the folder's (minilvlm.recipes resolves them from it); its image token must be
    the folder's image_token_index; the LM's vocabulary grows to the model's rows."""
    info = read_llava(folder)
    c = model.config
    if info.image_token_id != c.image_token_id:
        raise WeightsError(f"{folder}: image_token_index is {info.image_token_id}, but the tokenizer's <image> is id "
                           f"{c.image_token_id}; use the folder's own tokenizer")
    where = open_checkpoint(folder)
    layout = layout_of(where, folder)
    claimed = set()
    for part in ("vision", "projector", "lm"):
        claimed |= {k for k in where if _relative(k, part, layout) is not None}
    stray = sorted(set(where) - claimed)
    if stray:
        raise WeightsError(f"{folder}: tensors outside the tower, projector and language model: {stray[:8]}")
    load_part(model.vision, folder, "vision")
    load_part(model.lm, folder, "lm")
    state = _projector_state(part_view(where, "projector", layout), info.projector, folder)
    with torch.no_grad():
        model.projector.load_state_dict(state, strict=True)
    return model
