"""Our model configs as Hugging Face config.json dicts, for export: the inverse of the readers in
minilvlm.weights. Written as plain JSON, so `transformers` is never imported here.

Our Decoder and VisionTransformer are one class each with switches; a Hugging Face architecture is
one fixed setting of those switches. `decoder_model_type` and `vision_model_type` find the
architecture a config matches, or say which switches keep it from matching the nearest one."""
from minilvlm.models.decoder import DecoderConfig
from minilvlm.models.vision import VisionConfig
from minilvlm.weights.llava import PROJECTOR_ACTS


class ExportError(ValueError):
    """A model, run or output folder that cannot be exported, with what to do about it."""


# Our activation names -> the `hidden_act` names transformers knows (ACT2FN).
HF_ACT_NAMES = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu"}

_DECODER_COMMON = dict(norm="rms", mlp="swiglu", parallel_block=False, rotary_fraction=1.0, lm_head_bias=False,
                       qk_norm=False)
# (model_type, the switch values it fixes). LLaMA has one attention_bias for q/k/v and o, so it
# appears twice; Qwen2 is q/k/v biases without an output bias.
_DECODER_SHAPES = (
    ("llama", dict(_DECODER_COMMON, qkv_bias=False, out_bias=False)),
    ("llama", dict(_DECODER_COMMON, qkv_bias=True, out_bias=True)),
    ("qwen2", dict(_DECODER_COMMON, qkv_bias=True, out_bias=False, mlp_bias=False)),
    ("phi", dict(norm="layer", mlp="plain", parallel_block=True, qkv_bias=True, out_bias=True, mlp_bias=True,
                 lm_head_bias=True)),
)
_VISION_SHAPES = (
    ("clip_vision_model", dict(class_token=True, pre_norm=True, stem_bias=False, norm_output=False)),
    ("siglip_vision_model", dict(class_token=False, pre_norm=False, stem_bias=True, norm_output=True)),
)
_ARCHITECTURE_NAMES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "phi": "PhiForCausalLM"}


def _match(config, shapes, what):
    """The model_type whose fixed switches `config` has; else an error naming the nearest one and
    every switch that differs from it."""
    best = None
    for model_type, wanted in shapes:
        differ = [f"{name}={value!r} (ours: {getattr(config, name)!r})" for name, value in wanted.items()
                  if getattr(config, name) != value]
        if not differ:
            return model_type
        if best is None or len(differ) < len(best[1]):
            best = (model_type, differ)
    supported = ", ".join(sorted({t for t, _ in shapes}))
    raise ExportError(f"the {what} fits no Hugging Face architecture we export ({supported}); the nearest, "
                      f"{best[0]}, needs {', '.join(best[1])}")


def _hf_act(name, where):
    if name not in HF_ACT_NAMES:
        raise ExportError(f"{where}: activation {name!r} has no transformers name; exportable: {sorted(HF_ACT_NAMES)}")
    return HF_ACT_NAMES[name]


def decoder_model_type(c: DecoderConfig):
    """"llama", "qwen2" or "phi" for a decoder config; ExportError if it is none of them."""
    model_type = _match(c, _DECODER_SHAPES, "decoder")
    if model_type == "phi" and c.qk_norm and c.head_dim != c.dim // c.n_heads:
        # transformers sizes Phi's q/k LayerNorms as hidden_size // num_attention_heads
        raise ExportError(f"a Phi decoder with qk_norm needs head_dim = dim // n_heads = {c.dim // c.n_heads} "
                          f"(ours: {c.head_dim}); transformers sizes its q/k LayerNorms that way")
    return model_type


def vision_model_type(c: VisionConfig):
    """"clip_vision_model" or "siglip_vision_model"; ExportError if the tower is neither."""
    return _match(c, _VISION_SHAPES, "vision tower")


def decoder_config(c: DecoderConfig, special_ids=None):
    """config.json of the decoder as its transformers causal LM. special_ids: bos/eos/pad token ids."""
    model_type = decoder_model_type(c)
    out = dict(
        architectures=[_ARCHITECTURE_NAMES[model_type]], model_type=model_type, vocab_size=c.vocab_size,
        hidden_size=c.dim, intermediate_size=c.mlp_dim, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, head_dim=c.head_dim,
        hidden_act=_hf_act(c.act, "decoder"), max_position_embeddings=c.max_seq_len, rope_theta=c.rope_theta,
        rope_scaling=None, tie_word_embeddings=c.tie_embeddings, attention_dropout=0.0)
    if model_type == "phi":
        out.update(layer_norm_eps=c.norm_eps, partial_rotary_factor=c.rotary_fraction, qk_layernorm=c.qk_norm,
                   resid_pdrop=0.0, embd_pdrop=0.0)
    else:
        out.update(rms_norm_eps=c.norm_eps)
    if model_type == "llama":
        out.update(attention_bias=c.qkv_bias, mlp_bias=c.mlp_bias)
    if model_type == "qwen2":
        out.update(use_sliding_window=False, sliding_window=None)
    for name, value in (special_ids or {}).items():
        if value is not None:
            out[f"{name}_token_id"] = value
    return out


def vision_config(c: VisionConfig):
    """config.json dict of the tower as a transformers CLIP or SigLIP vision model."""
    model_type = vision_model_type(c)
    out = dict(model_type=model_type, hidden_size=c.dim, intermediate_size=c.mlp_dim,
               num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_channels=c.channels,
               image_size=c.image_size, patch_size=c.patch_size, hidden_act=_hf_act(c.act, "vision tower"),
               layer_norm_eps=c.norm_eps, attention_dropout=0.0)
    if model_type == "siglip_vision_model":
        out["vision_use_head"] = False   # LLaVA reads hidden states; we have no attention-pooling head
    return out


def llava_config(c, special_ids=None, dtype_name="float32"):
    """config.json dict of a LLaVAConfig as transformers' LlavaForConditionalGeneration."""
    if c.projector not in PROJECTOR_ACTS:
        raise ExportError(f"projector {c.projector!r} cannot be exported; supported: {sorted(PROJECTOR_ACTS)}")
    if not 0 <= c.image_token_id < c.decoder.vocab_size:
        # transformers 4.57 embeds input_ids before it writes the image features over the image
        # positions, so an image id past the table is an index error there.
        raise ExportError(f"image_token_id {c.image_token_id} lies outside the decoder's embedding table "
                          f"(vocab_size {c.decoder.vocab_size}); transformers looks the image ids up in the table "
                          f"before replacing them, so the exported model could not run. Train with a tokenizer "
                          f"whose <image> token is inside the vocabulary (runs of tools/train.py are)")
    if c.decoder.lm_head_bias:
        raise ExportError("the decoder's lm_head has a bias (Phi-style), and transformers' "
                          "LlavaForConditionalGeneration has a bias-free lm_head for every text model, so it cannot "
                          "hold this model; export the decoder alone with --decoder-only (PhiForCausalLM has it)")
    n_states = c.vision.n_layers + 1
    if not -n_states <= c.feature_layer < n_states:
        raise ExportError(f"feature_layer {c.feature_layer} is out of range for a tower of {n_states} hidden states")
    text = decoder_config(c.decoder, special_ids)
    text.pop("architectures")
    return dict(
        architectures=["LlavaForConditionalGeneration"], model_type="llava",
        vision_config=vision_config(c.vision), text_config=text, image_token_index=c.image_token_id,
        projector_hidden_act=PROJECTOR_ACTS[c.projector], multimodal_projector_bias=True,
        vision_feature_layer=c.feature_layer,
        # CLIP's class token is dropped ("default"); SigLIP has none, so every token is kept ("full")
        vision_feature_select_strategy="default" if c.vision.class_token else "full",
        image_seq_length=c.image_tokens, tie_word_embeddings=c.decoder.tie_embeddings, torch_dtype=dtype_name)


def image_processor_config(c: VisionConfig, mean, std, mode="crop"):
    """preprocessor_config.json for transformers' LlavaImageProcessor, reproducing our image mode
    (minilvlm.data.images): `pad` pads to a square with int(mean x 255) per channel (do_pad, the
    colour our recipes pad with), then resizes to the tower's size; `crop` resizes the short side and
    centre-crops; `resize` squashes. Then scale to 0..1 and normalize with the run's mean and std."""
    size = c.image_size
    vision_model_type(c)
    out = dict(image_processor_type="LlavaImageProcessor", do_resize=True, resample=3, do_rescale=True,
               rescale_factor=1 / 255, do_normalize=True, image_mean=list(mean), image_std=list(std),
               do_convert_rgb=True, do_pad=mode == "pad", do_center_crop=mode == "crop",
               crop_size={"height": size, "width": size})
    if mode == "crop":
        out["size"] = {"shortest_edge": size}
    elif mode in ("pad", "resize"):
        out["size"] = {"height": size, "width": size}
    else:
        raise ExportError(f"data.image_mode {mode!r} has no transformers image processor setting; "
                          f"exportable: pad, crop, resize")
    return out
