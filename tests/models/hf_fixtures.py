"""Tiny random-init `transformers` models saved as sharded safetensors folders (test-only reference)."""
from pathlib import Path

import torch

try:
    import transformers
except ImportError as exc:  # a hard failure: the parity tests must run, never be skipped
    raise ImportError("the parity tests need transformers (test-only): pip install -r requirements-test.txt") from exc

SHARD = "20KB"  # small enough that every tiny model is split into several shards


def _save(model, folder, shard=SHARD):
    model.save_pretrained(folder, safe_serialization=True, max_shard_size=shard)
    return model.eval()


def llama(folder, shard=SHARD, **overrides):
    """shard: the largest shard ("20KB" splits every tiny model; "1GB" writes one model.safetensors)."""
    cfg = dict(vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=128, rope_theta=10000.0, rms_norm_eps=1e-6)
    cfg.update(overrides)
    torch.manual_seed(0)
    return _save(transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)), folder, shard)


def qwen2(folder, **overrides):
    cfg = dict(vocab_size=151, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=128, rope_theta=1e6)
    cfg.update(overrides)
    torch.manual_seed(1)
    return _save(transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**cfg)), folder)


def phi(folder, **overrides):
    cfg = dict(vocab_size=173, hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
               max_position_embeddings=128, partial_rotary_factor=0.4)
    cfg.update(overrides)
    torch.manual_seed(2)
    model = transformers.PhiForCausalLM(transformers.PhiConfig(**cfg))
    with torch.no_grad():  # HF inits biases and LayerNorms to 0/1; randomize them so they are tested
        for name, p in model.named_parameters():
            if name.endswith("bias") or "layernorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return _save(model, folder)


def clip_vision(folder, **overrides):
    cfg = dict(image_size=30, patch_size=6, hidden_size=48, intermediate_size=72, num_hidden_layers=3,
               num_attention_heads=4)
    cfg.update(overrides)
    torch.manual_seed(3)
    model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**cfg))
    _perturb_norms(model)
    return _save(model, folder)


def siglip_vision(folder, **overrides):
    cfg = dict(image_size=28, patch_size=7, hidden_size=32, intermediate_size=56, num_hidden_layers=3,
               num_attention_heads=4)
    cfg.update(overrides)
    torch.manual_seed(4)
    model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**cfg))
    _perturb_norms(model)
    return _save(model, folder)


def _perturb_norms(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias") or "class_embedding" in name:
                p.add_(torch.randn_like(p) * 0.1)


def llava(folder, *, vision="clip", text="llama", layout="legacy", vocab_size=150, image_token_index=149,
          projector_act="gelu", seed=5, **overrides):
    """A tiny LlavaForConditionalGeneration saved to folder: by save_pretrained (layout "legacy",
    the keys transformers 4.57 writes: language_model.model.*), or as its state_dict's module names
    (layout "modules": model.language_model.*, which newer releases write). Biases and norms are
    perturbed so that they are tested."""
    from safetensors.torch import save_file
    if vision == "clip":
        vision_config = transformers.CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=48, intermediate_size=72,
                                                      num_hidden_layers=3, num_attention_heads=4)
    else:
        vision_config = transformers.SiglipVisionConfig(image_size=32, patch_size=8, hidden_size=32,
                                                        intermediate_size=56, num_hidden_layers=3, num_attention_heads=4)
    text_cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[text]
    text_config = text_cls(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                           tie_word_embeddings=text == "qwen2")
    settings = dict(image_token_index=image_token_index, projector_hidden_act=projector_act,
                    vision_feature_select_strategy="default" if vision == "clip" else "full",
                    tie_word_embeddings=text == "qwen2")
    settings.update(overrides)
    torch.manual_seed(seed)
    model = transformers.LlavaForConditionalGeneration(
        transformers.LlavaConfig(vision_config=vision_config, text_config=text_config, **settings)).eval()
    _perturb_norms(model)
    model.save_pretrained(folder)
    if layout == "modules":
        state = {k: v.contiguous() for k, v in model.state_dict().items() if not (settings["tie_word_embeddings"]
                                                                                  and k == "lm_head.weight")}
        (Path(folder) / "model.safetensors").unlink()
        save_file(state, Path(folder) / "model.safetensors", metadata={"format": "pt"})
    return model
