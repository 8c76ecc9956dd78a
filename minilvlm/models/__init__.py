"""Models: the CLIP/SigLIP vision tower and the LLaMA/Qwen2/Phi decoder, loaded from Hugging Face folders."""
import torch

from minilvlm.models.decoder import DECODER_PRESETS, Decoder, DecoderConfig, KVCache
from minilvlm.models.vision import VISION_PRESETS, VisionConfig, VisionTransformer


def from_pretrained(path, dtype=torch.float32):
    """Our model for the folder's config.json model_type, with its safetensors weights cast to dtype
    (None keeps the checkpoint's dtype). See minilvlm.weights."""
    from minilvlm.weights import from_pretrained as load  # weights imports the models, so import late
    return load(path, dtype)


__all__ = ["Decoder", "DecoderConfig", "KVCache", "DECODER_PRESETS", "VisionTransformer", "VisionConfig",
           "VISION_PRESETS", "from_pretrained"]
