"""Building the eve recipe's model from a run config (minilvlm/models/eve.py): the embedder, the LM
and, for the stages that align (prealign, pretrain), the aligner and its frozen teacher ViT."""
import dataclasses

from minilvlm.models.eve import EVE, STAGES, EVEConfig
from minilvlm.train.config import ConfigError
from minilvlm.train.pretrained import init_from_scratch, load_pretrained

ALIGNED_STAGES = STAGES[:2]


def eve_config(cfg, vocab_size=0, image_token_id=-1):
    """The EVEConfig of a run config; a ConfigError for a geometry that does not fit."""
    e = cfg.model.eve
    aligned = cfg.train.stage in ALIGNED_STAGES
    try:
        return EVEConfig(decoder=dataclasses.replace(cfg.model.decoder, vocab_size=vocab_size),
                         teacher=cfg.model.vision if aligned else None, image_size=cfg.image_size,
                         patch_size=e.patch_size, pool=e.pool, dim=e.dim, heads=e.heads,
                         projector=cfg.model.projector, align_layers=tuple(e.align_layers),
                         align_weight=e.align_weight, teacher_layer=cfg.model.feature_layer,
                         image_token_id=image_token_id)
    except ValueError as err:
        raise ConfigError(f"model.eve: {err}") from None


def check_teacher(cfg):
    """The aligning stages need teacher weights, or an explicit random teacher (the demo without a
    pretrained tower)."""
    e = cfg.model.eve
    if cfg.train.stage in ALIGNED_STAGES and not cfg.model.vision_weights and not e.random_teacher:
        raise ConfigError(f"model.vision_weights: stage {cfg.train.stage!r} aligns the LM's patch states to a "
                          f"frozen teacher ViT, but no weights are set. Give a Hugging Face CLIP/SigLIP folder or a "
                          f"llava run's checkpoint (e.g. runs/demo/checkpoints/step_001000/model.safetensors), or "
                          f"set model.eve.random_teacher = true to align to a random frozen ViT")


def build_eve_model(cfg, tokenizer, load_weights=True):
    """The EVE model, initialised for training from scratch, then the configured pretrained weights
    (teacher, LM) loaded when load_weights."""
    check_teacher(cfg)
    model = EVE(eve_config(cfg, tokenizer.vocab_size, tokenizer.image_token_id))
    init_from_scratch(module for name, module in model.named_modules() if not name.startswith("teacher"))
    m = cfg.model
    if load_weights and model.teacher is not None and m.vision_weights:
        load_pretrained(model.teacher, m.vision_weights, "model.vision_weights", "vision")
        model.teacher.requires_grad_(False)
    if load_weights and m.lm_weights:
        load_pretrained(model.lm, m.lm_weights, "model.lm_weights", "decoder")
    return model
