"""Recipe `llava` (LLaVA-1.5, ALLaVA): a vision tower, a projector and a decoder LM
(minilvlm/models/llava.py), trained in two stages: `pretrain` (the projector, and the LM too with
train.pretrain_lm) and `finetune` (projector and LM). The tower stays frozen unless
train.train_vision; a run without tower weights first pretrains its from-scratch tower
(minilvlm/train/vision_pretrain.py)."""
import torch

from minilvlm.config import ConfigError
from minilvlm.models.llava import LLaVA, LLaVAConfig
from minilvlm.models.multimodal import init_from_scratch
from minilvlm.recipes.base import Recipe
from minilvlm.recipes.pretrained import decoder_config, load_pretrained, load_previous_stage


class LLaVARecipe(Recipe):
    name = "llava"
    stages = {"pretrain": "the projector (and the LM with train.pretrain_lm)",
              "finetune": "the projector and the LM"}
    supports_lora = True

    def validate(self, cfg):
        super().validate(cfg)
        m = cfg.model
        if m.lora.rank and not (m.init_from or (m.lm_weights and (m.vision_weights or cfg.train.train_vision))):
            raise ConfigError("model.lora: LoRA checkpoints hold only what trains, so the frozen tower and LM must "
                              "come from files; set model.init_from, or model.lm_weights and model.vision_weights")

    def build_model(self, cfg, tokenizer, load_weights=True):
        m = cfg.model
        model = LLaVA(LLaVAConfig(vision=m.vision, decoder=decoder_config(cfg, tokenizer), projector=m.projector,
                                  feature_layer=m.feature_layer, image_token_id=tokenizer.image_token_id))
        init_from_scratch(model.modules())
        torch.nn.init.normal_(model.vision.pos_embed, std=0.02)
        if load_weights:
            if m.vision_weights:
                load_pretrained(model.vision, m.vision_weights, "model.vision_weights", "vision")
            if m.lm_weights:
                load_pretrained(model.lm, m.lm_weights, "model.lm_weights", "decoder")
            if m.init_from:
                load_previous_stage(model, m.init_from)
        return self.add_lora(model, cfg)

    def stage_model(self, model, cfg):
        t = cfg.train
        return model.set_stage(t.stage, pretrain_lm=t.pretrain_lm, train_vision=t.train_vision)

    def skip_tower_pretraining(self, cfg):
        if cfg.data.blank_images:   # the text-only baseline: the tower must not see what the LM is denied
            return "data.blank_images hides the pictures"
        if cfg.model.vision_weights or cfg.model.init_from:
            key = "model.vision_weights" if cfg.model.vision_weights else "model.init_from"
            return f"the tower is loaded from {key}"
        return None

    def trained_parts(self, cfg):
        t = cfg.train
        parts = {"projector"}
        if t.stage == "finetune" or t.pretrain_lm:
            parts.add("lm")
        if t.train_vision:
            parts.add("vision")
        return sorted(parts)

    def export_refusal(self):
        return None


RECIPE = LLaVARecipe()
