"""Models: the CLIP/SigLIP vision tower, the LLaMA/Qwen2/Phi decoder, the adapters and the three
recipes' composite models. No file I/O here: Hugging Face folders load through minilvlm.weights."""
from minilvlm.models.adapters import MMAdapter, ModalityToken, RepAdapter
from minilvlm.models.decoder import DECODER_PRESETS, Decoder, DecoderConfig, KVCache
from minilvlm.models.vision import VISION_PRESETS, VisionConfig, VisionTransformer

__all__ = ["MMAdapter", "ModalityToken", "RepAdapter", "Decoder", "DecoderConfig", "KVCache", "DECODER_PRESETS",
           "VisionTransformer", "VisionConfig", "VISION_PRESETS"]
