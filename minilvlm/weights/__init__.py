"""Hugging Face checkpoints in: config.json (and an image processor's preprocessor_config.json) to
our config dataclasses, safetensors (single file or sharded with model.safetensors.index.json) to
our modules, through one explicit key map per architecture. The model is built on the meta device
and the memory-mapped tensors are assigned to it, so loading holds about one copy of the weights.
Nothing is ever unpickled. A tokenizer with more ids than the checkpoint's embedding rows (an added
`<image>`) grows the vocabulary tensors: the new rows are the mean of the existing ones.

Whole LLaVA folders (LlavaForConditionalGeneration, both key layouts) are read by
minilvlm.weights.llava."""
import contextlib
import re
from pathlib import Path

import torch

from minilvlm.io import WeightsError, dtype_problems, open_checkpoint, read_json_object
from minilvlm.models.checks import decoder_problems, vision_problems
from minilvlm.models.decoder import Decoder, DecoderConfig
from minilvlm.models.layers import HF_ACTIVATIONS
from minilvlm.models.vision import CLIP_MEAN, CLIP_STD, VisionConfig, VisionTransformer


# SigLIP's image processors normalise to -1..1 (mean and std 0.5), CLIP's with its own statistics.
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
# A decoder's tensors with one row per token id (grown when the tokenizer has more ids).
VOCAB_TENSORS = ("embed.weight", "lm_head.weight", "lm_head.bias")


# ---- key maps: our module (or parameter) name -> HF name, "{}" standing for the layer index ------
# A module entry maps its parameters by suffix (.weight, .bias); bare parameters are mapped whole.

_LLAMA_KEYS = {
    "embed": "model.embed_tokens",
    "layers.{}.attn_norm": "model.layers.{}.input_layernorm",
    "layers.{}.attn.wq": "model.layers.{}.self_attn.q_proj",
    "layers.{}.attn.wk": "model.layers.{}.self_attn.k_proj",
    "layers.{}.attn.wv": "model.layers.{}.self_attn.v_proj",
    "layers.{}.attn.wo": "model.layers.{}.self_attn.o_proj",
    "layers.{}.mlp_norm": "model.layers.{}.post_attention_layernorm",
    "layers.{}.mlp.w_gate": "model.layers.{}.mlp.gate_proj",
    "layers.{}.mlp.w_up": "model.layers.{}.mlp.up_proj",
    "layers.{}.mlp.w_down": "model.layers.{}.mlp.down_proj",
    "norm": "model.norm",
    "lm_head": "lm_head",
}
_PHI_KEYS = {
    "embed": "model.embed_tokens",
    "layers.{}.attn_norm": "model.layers.{}.input_layernorm",
    "layers.{}.attn.wq": "model.layers.{}.self_attn.q_proj",
    "layers.{}.attn.wk": "model.layers.{}.self_attn.k_proj",
    "layers.{}.attn.wv": "model.layers.{}.self_attn.v_proj",
    "layers.{}.attn.wo": "model.layers.{}.self_attn.dense",
    "layers.{}.attn.q_norm": "model.layers.{}.self_attn.q_layernorm",
    "layers.{}.attn.k_norm": "model.layers.{}.self_attn.k_layernorm",
    "layers.{}.mlp.w_up": "model.layers.{}.mlp.fc1",
    "layers.{}.mlp.w_down": "model.layers.{}.mlp.fc2",
    "norm": "model.final_layernorm",
    "lm_head": "lm_head",
}
_VIT_KEYS = {
    "patch_weight": "vision_model.embeddings.patch_embedding.weight",
    "patch_bias": "vision_model.embeddings.patch_embedding.bias",
    "cls_token": "vision_model.embeddings.class_embedding",
    "pos_embed": "vision_model.embeddings.position_embedding.weight",
    "pre_norm": "vision_model.pre_layrnorm",  # sic: the HF CLIP name
    "layers.{}.norm1": "vision_model.encoder.layers.{}.layer_norm1",
    "layers.{}.attn.wq": "vision_model.encoder.layers.{}.self_attn.q_proj",
    "layers.{}.attn.wk": "vision_model.encoder.layers.{}.self_attn.k_proj",
    "layers.{}.attn.wv": "vision_model.encoder.layers.{}.self_attn.v_proj",
    "layers.{}.attn.wo": "vision_model.encoder.layers.{}.self_attn.out_proj",
    "layers.{}.norm2": "vision_model.encoder.layers.{}.layer_norm2",
    "layers.{}.fc1": "vision_model.encoder.layers.{}.mlp.fc1",
    "layers.{}.fc2": "vision_model.encoder.layers.{}.mlp.fc2",
    "post_norm": "vision_model.post_layernorm",
}

# Checkpoint keys we know and deliberately do not load: buffers that older transformers saved, and
# the parts of full CLIP/SigLIP checkpoints outside the vision tower (text tower, projections, and
# SigLIP's attention-pooling head, which LVLMs do not use). Anything else unexpected is an error.
_DECODER_IGNORED = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)
_VIT_IGNORED = (r"vision_model\.embeddings\.position_ids", r"vision_model\.head\..*", r"text_model\..*",
                r"visual_projection\..*", r"text_projection\..*", r"logit_scale", r"logit_bias")


def hf_key(our_key, key_map):
    """Our parameter name -> the checkpoint's, e.g. layers.3.attn.wq.weight -> model.layers.3.self_attn.q_proj.weight."""
    match = re.search(r"\.(\d+)\.", our_key)
    template = our_key.replace(match.group(0), ".{}.", 1) if match else our_key
    fill = (lambda s: s.format(match.group(1))) if match else (lambda s: s)
    if template in key_map:
        return fill(key_map[template])
    module, _, suffix = template.rpartition(".")
    if module in key_map:
        return fill(key_map[module]) + "." + suffix
    raise KeyError(f"no checkpoint name for parameter {our_key!r}: add it to the key map")


# ---- config.json -> our configs ------------------------------------------------------------------

def _rope_theta(cfg, where):
    scaling = cfg.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        raise WeightsError(f"{where}: rope_scaling {scaling} is not supported (only plain RoPE is)")
    return float(cfg.get("rope_theta", 10000.0))


def _act(name, where):
    if name not in HF_ACTIVATIONS:
        raise WeightsError(f"{where}: hidden_act {name!r} is not supported; known: {sorted(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[name]


def _llama_like(cfg, where, *, qkv_bias, out_bias, vocab, hidden, inter, max_pos):
    heads = cfg.get("num_attention_heads", 32)
    return DecoderConfig(
        vocab_size=cfg.get("vocab_size", vocab), dim=cfg.get("hidden_size", hidden),
        n_layers=cfg.get("num_hidden_layers", 32), n_heads=heads,
        n_kv_heads=cfg.get("num_key_value_heads") or heads, head_dim=cfg.get("head_dim"),
        mlp_dim=cfg.get("intermediate_size", inter), act=_act(cfg.get("hidden_act", "silu"), where),
        norm_eps=cfg.get("rms_norm_eps", 1e-6), rope_theta=_rope_theta(cfg, where),
        qkv_bias=qkv_bias, out_bias=out_bias, mlp_bias=cfg.get("mlp_bias", False),
        tie_embeddings=cfg.get("tie_word_embeddings", False), max_seq_len=cfg.get("max_position_embeddings", max_pos))


def _llama_config(cfg, where):
    bias = cfg.get("attention_bias", False)
    return _llama_like(cfg, where, qkv_bias=bias, out_bias=bias, vocab=32000, hidden=4096, inter=11008, max_pos=2048)


def _qwen2_config(cfg, where):
    if cfg.get("use_sliding_window", False):
        raise WeightsError(f"{where}: use_sliding_window=true is not supported (Qwen2 checkpoints ship with it off)")
    return _llama_like(cfg, where, qkv_bias=True, out_bias=False, vocab=151936, hidden=4096, inter=22016,
                       max_pos=32768)


def _phi_config(cfg, where):
    heads = cfg.get("num_attention_heads", 32)
    return DecoderConfig(
        vocab_size=cfg.get("vocab_size", 51200), dim=cfg.get("hidden_size", 2048),
        n_layers=cfg.get("num_hidden_layers", 24), n_heads=heads, n_kv_heads=cfg.get("num_key_value_heads") or heads,
        mlp_dim=cfg.get("intermediate_size", 8192), mlp="plain", act=_act(cfg.get("hidden_act", "gelu_new"), where),
        norm="layer", norm_eps=cfg.get("layer_norm_eps", 1e-5), parallel_block=True,
        rope_theta=_rope_theta(cfg, where), rotary_fraction=cfg.get("partial_rotary_factor", 0.5),
        qkv_bias=True, out_bias=True, mlp_bias=True, lm_head_bias=True, qk_norm=cfg.get("qk_layernorm", False),
        tie_embeddings=cfg.get("tie_word_embeddings", False), max_seq_len=cfg.get("max_position_embeddings", 2048))


def _vision_config(cfg, where, *, siglip, pixel_stats=None):
    d = (dict(patch_size=16, act="gelu_pytorch_tanh", eps=1e-6) if siglip
         else dict(patch_size=32, act="quick_gelu", eps=1e-5))
    mean, std = pixel_stats or ((SIGLIP_MEAN, SIGLIP_STD) if siglip else (CLIP_MEAN, CLIP_STD))
    return VisionConfig(pixel_mean=mean, pixel_std=std,
        image_size=cfg.get("image_size", 224), patch_size=cfg.get("patch_size", d["patch_size"]),
        channels=cfg.get("num_channels", 3), dim=cfg.get("hidden_size", 768), n_layers=cfg.get("num_hidden_layers", 12),
        n_heads=cfg.get("num_attention_heads", 12), mlp_dim=cfg.get("intermediate_size", 3072),
        act=_act(cfg.get("hidden_act", d["act"]), where), norm_eps=cfg.get("layer_norm_eps", d["eps"]),
        class_token=not siglip, pre_norm=not siglip, stem_bias=siglip, norm_output=siglip)


# model_type -> (reads our config from the config dict, builds the model, key map, ignored keys).
# Vision readers also take the folder's pixel statistics (None: the tower's usual ones).
ARCHITECTURES = {
    "llama": (_llama_config, Decoder, _LLAMA_KEYS, _DECODER_IGNORED),
    "qwen2": (_qwen2_config, Decoder, _LLAMA_KEYS, _DECODER_IGNORED),
    "phi": (_phi_config, Decoder, _PHI_KEYS, _DECODER_IGNORED),
    "clip_vision_model": (lambda c, w, s=None: _vision_config(c, w, siglip=False, pixel_stats=s), VisionTransformer,
                          _VIT_KEYS, _VIT_IGNORED),
    "siglip_vision_model": (lambda c, w, s=None: _vision_config(c, w, siglip=True, pixel_stats=s), VisionTransformer,
                            _VIT_KEYS, _VIT_IGNORED),
}
VISION_TYPES = ("clip_vision_model", "siglip_vision_model")
DECODER_TYPES = ("llama", "qwen2", "phi")
# Full CLIP/SigLIP checkpoints (both towers): we read the vision tower.
_NESTED_VISION = {"clip": "clip_vision_model", "siglip": "siglip_vision_model"}


def read_json(path, what="config.json"):
    """A JSON object from a file of a Hugging Face folder; WeightsError when missing or invalid."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path} not found: a Hugging Face model folder needs {what}")
    return read_json_object(path, WeightsError)


def pixel_stats(folder):
    """(image_mean, image_std) of the folder's preprocessor_config.json, or None without one."""
    path = Path(folder) / "preprocessor_config.json"
    if not path.is_file():
        return None
    cfg = read_json(path, "preprocessor_config.json")
    stats = cfg.get("image_mean"), cfg.get("image_std")
    if not all(isinstance(s, list) and len(s) == 3 and all(isinstance(x, (int, float)) for x in s) for s in stats):
        raise WeightsError(f"{path}: image_mean and image_std must be lists of three numbers, got {stats}")
    return tuple(float(x) for x in stats[0]), tuple(float(x) for x in stats[1])


# The types of the config.json fields we read; a value of another type is an error naming the field.
_FIELD_TYPES = {
    **dict.fromkeys(("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                     "intermediate_size", "vocab_size", "max_position_embeddings", "image_size", "patch_size",
                     "num_channels"), (int,)),
    **dict.fromkeys(("rms_norm_eps", "layer_norm_eps", "rope_theta", "partial_rotary_factor"), (int, float)),
    **dict.fromkeys(("attention_bias", "mlp_bias", "tie_word_embeddings", "use_sliding_window", "qk_layernorm"),
                    (bool,)),
    "hidden_act": (str,), "model_type": (str,), "rope_scaling": (dict,), "vision_config": (dict,),
}


class _Fields(dict):
    """A config.json object whose `get` checks each field's type (`_FIELD_TYPES`) as it is read."""

    def __init__(self, data, where):
        super().__init__(data)
        self.where = where

    def get(self, key, default=None):
        value = super().get(key, default)
        kinds = _FIELD_TYPES.get(key)
        if value is None or kinds is None:
            return value
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise WeightsError(f"{self.where}: {key} must be {names}, got {type(value).__name__} {value!r}")
        return value


def config_of(model_type, cfg, where, folder=None):
    """Our config for a Hugging Face config dict of `model_type` (a vision tower's pixel statistics
    read from folder's preprocessor_config.json when it has one); WeightsError naming the file and
    the field for anything that is not a buildable model (wrong types, sizes that do not fit)."""
    if not isinstance(model_type, str) or model_type not in ARCHITECTURES:
        known = sorted([*ARCHITECTURES, *_NESTED_VISION, "llava"])
        raise WeightsError(f"{where}: model_type {model_type!r} is not supported; supported: {known}")
    cfg = cfg if isinstance(cfg, _Fields) else _Fields(cfg, where)
    try:
        if model_type in VISION_TYPES:
            config = ARCHITECTURES[model_type][0](cfg, where, pixel_stats(folder) if folder else None)
        else:
            config = ARCHITECTURES[model_type][0](cfg, where)
    except (ValueError, TypeError, ZeroDivisionError) as err:
        if isinstance(err, WeightsError):
            raise
        raise WeightsError(f"{where}: not a buildable {model_type} model: {err}") from None
    problems = (vision_problems(config) if isinstance(config, VisionConfig) else decoder_problems(config))
    if problems:
        raise WeightsError(f"{where}: not a buildable {model_type} model: " + "; ".join(problems))
    return config


def read_config(folder):
    """(model_type, our config) from folder/config.json (a LLaVA folder: minilvlm.weights.llava)."""
    path = Path(folder) / "config.json"
    cfg = _Fields(read_json(path), str(path))
    model_type = cfg.get("model_type")
    if model_type in _NESTED_VISION:
        model_type, cfg = _NESTED_VISION[model_type], _Fields(cfg.get("vision_config") or {}, f"{path} vision_config")
    return model_type, config_of(model_type, cfg, str(path), folder)


# ---- loading -------------------------------------------------------------------------------------

def _renamer(key_map):
    """key_map as a function: our name -> the checkpoint's (KeyError when it has none)."""
    return key_map if callable(key_map) else (lambda ours: hf_key(ours, key_map))


def grown(tensor, rows):
    """tensor [n, ...] extended to [rows, ...]; the new rows are the mean of the existing ones (a new
    token then starts as an average token, neither zero nor random)."""
    extra = rows - tensor.shape[0]
    if extra <= 0:
        return tensor
    mean = tensor.mean(0, keepdim=True, dtype=torch.float64).to(tensor.dtype)
    return torch.cat((tensor, mean.expand(extra, *tensor.shape[1:])))


def load_state_dict_into(model, folder, key_map, ignored=(), dtype=None, grow=(), tensors=None):
    """Assign the checkpoint's tensors to `model` (usually built on the meta device). key_map: a key
    map, or a function from our name to the checkpoint's. Missing, unexpected and wrong-shape
    tensors raise one WeightsError listing them all. Tensors named in `grow` (ours) may hold fewer
    rows than the model's; they are grown (`grown`). Floating tensors are cast to dtype when given;
    otherwise they keep the checkpoint's dtype. tensors: the checkpoint's {name: shard} to read
    (default: all of the folder's; a part of a larger model passes its own view)."""
    where, rename = tensors if tensors is not None else open_checkpoint(folder), _renamer(key_map)
    expected = model.state_dict()
    problems, used, sources = [], set(), {}
    for ours, param in expected.items():
        key = rename(ours)
        if key not in where:
            problems.append(f"missing: {key} (for {ours}, shape {list(param.shape)})")
            continue
        used.add(key)
        shape, want = where[key].shape(key), list(param.shape)
        fewer_rows = ours in grow and shape[1:] == want[1:] and 0 < shape[0] < want[0]
        if shape != want and not fewer_rows:
            problems.append(f"wrong shape: {key} is {shape}, the model expects {want}")
        sources[ours] = key
    tied_head = getattr(getattr(model, "config", None), "tie_embeddings", False)
    ignore = re.compile("|".join([*ignored, *(["lm_head\\.weight"] if tied_head else [])]) or "(?!)")
    for key in sorted(set(where) - used):
        if not ignore.fullmatch(key):
            problems.append(f"unexpected: {key} (shape {where[key].shape(key)})")
    stored = {key: where[key].entry(key) for key in sources.values()}
    wrong_dtype = dtype_problems(stored, {key: expected[ours] for ours, key in sources.items()}, "dtypes")
    if wrong_dtype:
        problems.append(wrong_dtype)
    if problems:
        raise WeightsError(f"checkpoint {folder} does not fit {type(model).__name__} "
                           f"({len(problems)} problems):\n  " + "\n  ".join(problems))
    state = {ours: grown(where[key].tensor(key, dtype), expected[ours].shape[0]) for ours, key in sources.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model


def _check_layer_count(config, where, folder):
    """Before the (meta) model is built: config.json must not claim more blocks than the weights hold
    (a typo of num_hidden_layers would otherwise build a huge empty model first)."""
    held = {int(m.group(1)) for key in where for m in [re.search(r"(?:^|\.)layers\.(\d+)\.", key)] if m}
    if config.n_layers > len(held):
        raise WeightsError(f"{Path(folder) / 'config.json'} says num_hidden_layers = {config.n_layers}, but the "
                           f"weights in {folder} hold tensors of {len(held)} layers")


@contextlib.contextmanager
def _skip_init():
    """Random init of meta tensors is wasted work, and its first call imports torch._dynamo (~2 s):
    make torch.nn.init's in-place initializers no-ops while the empty model is built."""
    names = ("normal_", "uniform_", "kaiming_uniform_", "trunc_normal_", "ones_", "zeros_", "xavier_uniform_")
    saved = {name: getattr(torch.nn.init, name) for name in names}
    try:
        for name in names:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def from_pretrained(folder, dtype=torch.float32, vocab_size=0):
    """Our model for the folder's model_type (Decoder or VisionTransformer), weights loaded, in eval mode.
    dtype=None keeps the checkpoint's dtype. vocab_size: a decoder's rows when the tokenizer has more
    ids than the checkpoint (its vocabulary is grown; see `grown`)."""
    model_type, config = read_config(folder)
    _, build, key_map, ignored = ARCHITECTURES[model_type]
    _check_layer_count(config, open_checkpoint(folder), folder)
    grow = ()
    if model_type in DECODER_TYPES and vocab_size > config.vocab_size:
        config.vocab_size, grow = vocab_size, VOCAB_TENSORS
    with torch.device("meta"), _skip_init():
        model = build(config)
    load_state_dict_into(model, folder, key_map, ignored, dtype, grow)
    return model.eval()


def by_key_map(key_map, hf_prefix=""):
    """A renamer for `to_hf_names`: our name -> hf_prefix + its checkpoint name, or None if the key
    map has no entry for it."""
    def rename(name):
        try:
            return hf_prefix + hf_key(name, key_map)
        except KeyError:
            return None
    return rename


def to_hf_names(state, parts):
    """{checkpoint name: tensor} for a state dict of ours. parts: (our name prefix, renamer of the rest
    of the name -> checkpoint name or None), the first matching prefix claiming a tensor. Every
    tensor must get a name no other tensor has; one WeightsError lists all that do not (export never
    drops a tensor silently)."""
    out, unmapped = {}, []
    for name, tensor in state.items():
        new = next((rename(name[len(prefix):]) for prefix, rename in parts if name.startswith(prefix)), None)
        if new is None or new in out:
            unmapped.append(name)
        else:
            out[new] = tensor
    if unmapped:
        raise WeightsError(f"{len(unmapped)} of our tensors have no place in the Hugging Face checkpoint, and "
                           f"nothing is dropped silently: {unmapped[:20]}")
    return out


def to_hf_state_dict(model, model_type, hf_prefix=""):
    """Our model's tensors under the checkpoint names of `model_type` (the inverse of loading, for
    export back to Hugging Face). A tied head is left out, as `transformers` saves it."""
    if model_type not in ARCHITECTURES:
        raise WeightsError(f"model_type {model_type!r} is not supported; supported: {sorted(ARCHITECTURES)}")
    return to_hf_names(model.state_dict(), [("", by_key_map(ARCHITECTURES[model_type][2], hf_prefix))])
