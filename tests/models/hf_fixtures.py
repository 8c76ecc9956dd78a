"""Tiny random-init `transformers` models saved as sharded safetensors folders (test-only reference)."""
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
