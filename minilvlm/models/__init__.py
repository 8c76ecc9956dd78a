"""Models: the CLIP/SigLIP vision tower, the LLaMA/Qwen2/Phi decoder (loaded from Hugging Face
folders) and the adapters."""
import torch

from minilvlm.models.adapters import MMAdapter, ModalityToken, RepAdapter
from minilvlm.models.decoder import DECODER_PRESETS, Decoder, DecoderConfig, KVCache
from minilvlm.models.vision import VISION_PRESETS, VisionConfig, VisionTransformer


def from_pretrained(path, dtype=torch.float32):
    """Our model for the folder's config.json model_type, with its safetensors weights cast to dtype
    (None keeps the checkpoint's dtype). See minilvlm.weights."""
    from minilvlm.weights import from_pretrained as load  # weights imports the models, so import late
    return load(path, dtype)


__all__ = ["MMAdapter", "ModalityToken", "RepAdapter", "Decoder", "DecoderConfig", "KVCache", "DECODER_PRESETS", "VisionTransformer", "VisionConfig",
           "VISION_PRESETS", "from_pretrained"]
