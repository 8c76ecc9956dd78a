"""Recipe `llava` (LLaVA-1.5, ALLaVA): a ViT whose penultimate-layer patch features (CLIP's class
token dropped) go through a projector and take the places of the image tokens in the decoder's
input embeddings (minilvlm.models.multimodal).

Stages (LLaVA's two): `pretrain` trains the projector (and the LM too when `pretrain_lm`), `finetune`
trains the LM and the projector. The vision tower stays frozen unless `train_vision` (a run with no
pretrained tower first pretrains one: minilvlm/train/vision_pretrain.py)."""
from dataclasses import dataclass, field

import torch
from torch import nn

from minilvlm.models.decoder import Decoder, DecoderConfig
from minilvlm.models.multimodal import attention_inputs, embed_with_images, make_projector
from minilvlm.models.vision import VisionConfig, VisionTransformer

STAGES = ("pretrain", "finetune")


@dataclass
class LLaVAConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    projector: str = "mlp2x_gelu"
    feature_layer: int = -2          # hidden-state index, as in transformers (LLaVA: penultimate)
    image_token_id: int = -1         # the tokenizer's <image> id (may lie past the embedding table)

    @property
    def image_tokens(self):
        """Tokens per image in the decoder: the patches, without the class token."""
        return self.vision.n_patches


class LLaVA(nn.Module):
    def __init__(self, config: LLaVAConfig):
        super().__init__()
        self.config = config
        self.vision = VisionTransformer(config.vision)
        self.projector = make_projector(config.projector, config.vision.dim, config.decoder.dim)
        self.lm = Decoder(config.decoder)

    def set_stage(self, stage, pretrain_lm=False, train_vision=False):
        """requires_grad per part for a training stage; returns the names of the trained parts."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
        train_lm = stage == "finetune" or pretrain_lm
        parts = {"vision": train_vision, "projector": True, "lm": train_lm}
        for name, on in parts.items():
            getattr(self, name).requires_grad_(on)
        return [name for name, on in parts.items() if on]

    def param_groups(self, lr, projector_lr=None, vision_lr=None):
        """Optimizer groups of the trainable params: the projector (at projector_lr), the LM and
        the vision tower (at lr unless given)."""
        groups = []
        for name, group_lr in (("projector", projector_lr), ("lm", None), ("vision", vision_lr)):
            params = [p for p in getattr(self, name).parameters() if p.requires_grad]
            if params:
                groups.append({"params": params, "lr": lr if group_lr is None else group_lr, "name": name})
        return groups

    def tower_features(self, images):
        """uint8 [N, 3, S, S] -> the tower's patch features that the projector reads [N, P, D_vision]."""
        features, = self.vision.forward_features(images, layers=[self.config.feature_layer])
        return features[:, 1:] if self.config.vision.class_token else features

    def image_features(self, images):
        """uint8 [N, 3, S, S] -> projected patch features [N, P, D_lm]."""
        frozen = not any(p.requires_grad for p in self.vision.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            features = self.tower_features(images)
        return self.projector(features)

    def embed(self, input_ids, images):
        """Decoder input embeddings [B, T, D] with each run of image ids replaced by one image's
        projected features."""
        return embed_with_images(self.lm, input_ids, images, self.config.image_token_id,
                                 self.config.image_tokens, self.image_features)[0]

    def forward(self, input_ids, images, attention_mask=None, *, position_ids=None, segment_ids=None, head=True):
        """Logits [B, T, V]; head=False: the final hidden states [B, T, D] (for `lm.loss`)."""
        embeds = self.embed(input_ids, images)
        return self.lm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                       segment_ids=segment_ids, head=head)

    # ---- the trainer's interface (every recipe model has these) ------------------------------

    def batch_loss(self, batch):
        """(summed next-token CE, labelled-token count, auxiliary loss or None) for one collated
        micro-batch (minilvlm.data.batching). The trainer divides the CE by the global batch's token
        count and adds the auxiliary loss (EVE's alignment loss) as it is."""
        mask, segments = attention_inputs(batch)
        # forward, not __call__: under FSDP, batch_loss itself gathers the root's weights, and a
        # nested call's post-forward hook would free them before the head below uses them.
        hidden = self.forward(batch["input_ids"], batch["images"], mask, position_ids=batch["position_ids"],
                              segment_ids=segments, head=False)
        loss, count = self.lm.loss(hidden, batch["labels"], batch.get("n_targets"))
        return loss, count, None

    def generation_inputs(self, input_ids, images, attention_mask):
        """(inputs_embeds, attention_mask) of left-padded prompts for `generate(self.lm, ...)`."""
        return self.embed(input_ids, images), attention_mask
