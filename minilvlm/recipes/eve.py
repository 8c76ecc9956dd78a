"""Recipe `eve` (EVE, encoder-free; minilvlm/models/eve.py): a patch embedder feeds the LM directly.
Stages: prealign (embedder + aligner, LM frozen), pretrain (everything), finetune (LM + embedder,
no aligner). The aligning stages pull the LM's patch states towards a frozen teacher ViT
(model.vision, weights from model.vision_weights)."""
import dataclasses

from minilvlm.config import ConfigError
from minilvlm.models.eve import EVE, STAGES, EVEConfig
from minilvlm.models.multimodal import init_from_scratch
from minilvlm.recipes.base import Recipe
from minilvlm.recipes.pretrained import decoder_config, load_pretrained, load_previous_stage

ALIGNED_STAGES = STAGES[:2]


def eve_config(cfg, image_size, tokenizer=None):
    """The EVEConfig of a run config (the vocabulary sized for `tokenizer`, when given); a
    ConfigError for a geometry that does not fit."""
    e = cfg.model.eve
    aligned = cfg.train.stage in ALIGNED_STAGES
    decoder = decoder_config(cfg, tokenizer) if tokenizer is not None else dataclasses.replace(cfg.model.decoder)
    try:
        return EVEConfig(decoder=decoder,
                         teacher=cfg.model.vision if aligned else None, image_size=image_size,
                         patch_size=e.patch_size, pool=e.pool, dim=e.dim, heads=e.heads,
                         projector=cfg.model.projector, align_layers=tuple(e.align_layers),
                         align_weight=e.align_weight, teacher_layer=cfg.model.feature_layer,
                         image_token_id=tokenizer.image_token_id if tokenizer is not None else -1)
    except ValueError as err:
        raise ConfigError(f"model.eve: {err}") from None


class EVERecipe(Recipe):
    name = "eve"
    stages = {"prealign": "1: the embedder and the aligner, LM frozen",
              "pretrain": "2: everything (LM, embedder, aligner)",
              "finetune": "3: the LM and the embedder, no aligner"}
    supports_lora = True

    def validate(self, cfg):
        super().validate(cfg)
        e = cfg.model.eve
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in e.align_layers):
            raise ConfigError(f"model.eve.align_layers: expected a list of integers, got {e.align_layers!r}")
        if cfg.train.stage in ALIGNED_STAGES and not cfg.model.vision_weights and not e.random_teacher:
            raise ConfigError(f"model.vision_weights: stage {cfg.train.stage!r} aligns the LM's patch states to a "
                              f"frozen teacher ViT, but no weights are set. Give a Hugging Face CLIP/SigLIP folder or "
                              f"a llava run's checkpoint (e.g. runs/demo/checkpoints/step_001000/model.safetensors), "
                              f"or set model.eve.random_teacher = true to align to a random frozen ViT")
        eve_config(cfg, self.image_size(cfg))
        if cfg.model.lora.rank and not (cfg.model.lm_weights or cfg.model.init_from):
            raise ConfigError("model.lora: LoRA checkpoints hold only what trains, so the frozen LM must come from "
                              "files; set model.lm_weights or model.init_from")

    def image_size(self, cfg):
        return cfg.model.eve.image_size or cfg.model.vision.image_size

    def build_model(self, cfg, tokenizer, load_weights=True):
        """The EVE model, initialised for training from scratch, then the configured pretrained
        weights (teacher, LM, a previous stage) loaded when load_weights."""
        model = EVE(eve_config(cfg, self.image_size(cfg), tokenizer))
        init_from_scratch(module for name, module in model.named_modules() if not name.startswith("teacher"))
        m = cfg.model
        if load_weights:
            if model.teacher is not None and m.vision_weights:
                load_pretrained(model.teacher, m.vision_weights, "model.vision_weights", "vision")
                model.teacher.requires_grad_(False)
            if m.lm_weights:
                load_pretrained(model.lm, m.lm_weights, "model.lm_weights", "decoder")
            if m.init_from:   # a previous stage; its aligner is dropped when this stage has none
                load_previous_stage(model, m.init_from, dropped=("aligner.",))
        return self.add_lora(model, cfg)

    def export_refusal(self):
        return ("eve runs read images through an encoder-free patch embedder, not a vision tower, so they are not "
                "LlavaForConditionalGeneration models")


RECIPE = EVERecipe()
