"""Recipe `mma`: LaVIN's Mixture-of-Modality Adaptation (Luo et al., "Cheap and Quick", section 3).

A frozen ViT and a frozen decoder LM, bridged and adapted by small trained modules only:
- an MM-Adapter (minilvlm.models.adapters.MMAdapter) between the pre-attention norm and the
  attention of EVERY ViT block (up to the deepest one read) and EVERY LM block. Each sits in the
  block's adapter slot (`VisionBlock.adapter`, `Block.adapter`), so the base blocks' own tensors
  keep their names (`vision.*`, `lm.*`, as in the llava recipe) and the adapters are
  `vision.layers.N.adapter.*` and `lm.layers.N.adapter.*`;
- the modality token: a learned embedding per sample, "text only" (0) or "has image" (1), at
  position 0 of the LM sequence. Its attention-mask column is 0, so no other token attends to it
  (it attends to itself only); it exists to feed the routers: each LM adapter routes on the
  sample's normed hidden state at position 0. In the ViT every sample has an image, and its
  adapters route on the sample's own class token (position 0). LaVIN's released code indexes
  `x[:, 0]` in CLIP's sequence-first layout, which routes every sample on batch sample 0; we
  route per sample, as the paper intends;
- the visual adapter: Linear -> SiLU -> Linear from the ViT width to the LM width, applied to the
  class tokens of the chosen ViT layers (every 4th: 6 tokens for a 24-layer tower). Those tokens
  are the image tokens of the LM input, so `config.image_tokens` is the number of chosen layers.

Text-only samples have no image ids in input_ids; has_image is read from input_ids. With a KV
cache, decode steps no longer see position 0; the decoder keeps each layer's router input in the
cache at prefill (minilvlm.models.decoder.Block.router_input).
"""
from dataclasses import dataclass, field

import torch
from torch import nn

from minilvlm.models.adapters import MMAdapter, ModalityToken, RepAdapter
from minilvlm.models.decoder import Decoder, DecoderConfig
from minilvlm.models.multimodal import embed_with_images
from minilvlm.models.state import mismatch
from minilvlm.models.vision import VisionConfig, VisionTransformer

# The trained parts outside the blocks' adapter slots.
_OWN_PARTS = ("modality_token.", "visual_adapter.")
# Checkpoints written before the adapters moved into the blocks' slots named them this way.
_LEGACY_PREFIXES = {"vision_adapters.": "vision.layers.{}.adapter.", "lm_adapters.": "lm.layers.{}.adapter."}


# LaVIN's routing (the MM-Adapter) and the two ablations of it (docs/recipes.md): "fixed" puts a
# single-path RepAdapter where each MM-Adapter was (no router); "no_token" keeps the routers but gives
# every sample the same modality token, so they cannot tell a text-only sample from one with an image.
ROUTINGS = ("router", "fixed", "no_token")
# What the LM sees of an image: LaVIN's class tokens, or (a diagnostic, not the paper) the patch tokens
# of the deepest chosen layer, to measure what the class-token bottleneck costs (docs/recipes.md).
VISUAL_TOKENS = ("class", "patches")

PACKED_ERROR = ("the mma recipe puts one modality token in front of each row, but this batch packs several "
                "samples per row; turn packing off")


def is_adapter_key(key):
    """Whether a state-dict key is one of the tensors the mma recipe trains."""
    return ".adapter." in key or key.startswith(_OWN_PARTS)


@dataclass
class MMAConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    hidden: int = 8                   # the MM-Adapter's bottleneck r
    groups: int = 2                   # grouped up-projections, as LaVIN's Conv1d(groups=2)
    scale: float = 1.0
    temperature: float = 10.0         # routing softmax: 10 for LaVIN-7B, 5 for 13B
    dropout: float = 0.1              # on the adapters' bottleneck while training
    vision_layers: tuple = (4, 8, 12, 16, 20, 24)   # hidden-state indices whose class tokens feed the LM
    visual_hidden: int = 128          # the visual adapter's width ("visual neck" 128)
    image_token_id: int = -1
    routing: str = "router"           # or the ablations "fixed" and "no_token" (ROUTINGS)
    visual_tokens: str = "class"      # or the diagnostic "patches" (VISUAL_TOKENS)

    def __post_init__(self):
        if self.routing not in ROUTINGS:
            raise ValueError(f"routing {self.routing!r}: one of {', '.join(ROUTINGS)}")
        if self.visual_tokens not in VISUAL_TOKENS:
            raise ValueError(f"visual_tokens {self.visual_tokens!r}: one of {', '.join(VISUAL_TOKENS)}")
        if not self.vision.class_token:
            raise ValueError("the mma recipe reads the ViT's class tokens; this tower has none (SigLIP?)")
        n = self.vision.n_layers
        bad = [i for i in self.vision_layers if not 1 <= i <= n]
        if not self.vision_layers or bad:
            raise ValueError(f"vision_layers {list(self.vision_layers)}: give block outputs 1..{n} "
                             f"(the tower has {n} blocks)")

    @property
    def image_tokens(self):
        """LM tokens per image: one per chosen ViT layer (or one per patch, with visual_tokens="patches")."""
        if self.visual_tokens == "patches":
            return self.vision.n_patches
        return len(self.vision_layers)


class MMA(nn.Module):
    """The LaVIN model. `vision` and `lm` may be passed already loaded (from Hugging Face folders);
    otherwise they are built from the config, to be filled with the base's weights."""

    def __init__(self, config: MMAConfig, vision=None, lm=None):
        super().__init__()
        self.config = c = config
        self.vision = vision if vision is not None else VisionTransformer(c.vision)
        self.lm = lm if lm is not None else Decoder(c.decoder)
        shared = dict(hidden=c.hidden, groups=c.groups, scale=c.scale, dropout=c.dropout)
        make = (lambda dim: RepAdapter(dim, **shared)) if c.routing == "fixed" else \
            (lambda dim: MMAdapter(dim, temperature=c.temperature, **shared))
        # Blocks past the deepest chosen layer never run, so they get no adapter.
        for block in self.vision.layers[:max(c.vision_layers)]:
            block.adapter = make(c.vision.dim)
        for block in self.lm.layers:
            block.adapter = make(c.decoder.dim)
        self.modality_token = ModalityToken(c.decoder.dim, kinds=1 if c.routing == "no_token" else 2)
        self.visual_adapter = nn.Sequential(nn.Linear(c.vision.dim, c.visual_hidden), nn.SiLU(),
                                            nn.Linear(c.visual_hidden, c.decoder.dim))

    def adapters(self):
        """The MM-Adapters in the ViT's and the LM's block slots."""
        return [b.adapter for b in (*self.vision.layers, *self.lm.layers) if b.adapter is not None]

    def routing_weights(self, input_ids=None, has_image=None):
        """The first LM adapter's path weights [B, paths] (the deeper ones read evolved states)."""
        if self.config.routing == "fixed":
            raise ValueError("routing 'fixed' has no router: its RepAdapters take one path for every sample")
        if has_image is None:
            has_image = (input_ids == self.config.image_token_id).any(-1)
        first = self.lm.layers[0]
        return first.adapter.routing_weights(first.attn_norm(self.modality_token(has_image)))

    # ---- training setup (the trainer's interface) -------------------------------------------

    def set_stage(self, stage="finetune"):
        """Only the adapters train; the ViT and the LM stay frozen. Returns the trained parts."""
        self.requires_grad_(False)
        for module in (*self.adapters(), self.modality_token, self.visual_adapter):
            module.requires_grad_(True)
        if self.config.routing == "fixed":
            self.modality_token.requires_grad_(False)   # no router reads it: it would get no gradient
        return ["vision_adapters", "lm_adapters", "modality_token", "visual_adapter"]

    def param_groups(self, lr, projector_lr=None, vision_lr=None):
        """One group of every trainable adapter tensor (LaVIN trains them all at one lr)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "name": "adapters"}]

    # ---- adapter-only state -----------------------------------------------------------------

    def trainable_state_dict(self):
        """The adapter tensors alone (a few MB for LLaMA-7B); the base comes from its own files."""
        return {k: v for k, v in self.state_dict().items() if is_adapter_key(k)}

    def base_state_dict(self):
        """The frozen base's tensors (`vision.*`, `lm.*`, without the adapters)."""
        return {k: v for k, v in self.state_dict().items() if not is_adapter_key(k)}

    def load_trainable_state_dict(self, tensors, source="adapter checkpoint"):
        tensors = {_rename_legacy(k): v for k, v in tensors.items()}
        problems = mismatch(self.trainable_state_dict(), tensors)
        if problems:
            raise ValueError(f"{source} does not fit this model (adapter settings or base sizes differ?): {problems}")
        self.load_state_dict(tensors, strict=False)

    # ---- forward ----------------------------------------------------------------------------

    def image_features(self, images):
        """uint8 [N, 3, S, S] -> [N, len(vision_layers), D_lm]: the chosen layers' class tokens,
        normed by CLIP's pooling norm (it puts the layers on one scale), through the visual adapter.
        visual_tokens="patches": [N, patches, D_lm] from the deepest chosen layer's patch tokens."""
        if self.config.visual_tokens == "patches":
            state, = self.vision.forward_features(images, layers=[max(self.config.vision_layers)])
            return self.visual_adapter(self.vision.post_norm(state[:, 1:]))
        states = self.vision.forward_features(images, layers=list(self.config.vision_layers))
        cls = torch.stack([s[:, 0] for s in states], dim=1)
        return self.visual_adapter(self.vision.post_norm(cls))

    def embed(self, input_ids, images):
        """[B, 1 + T, D]: the modality token, then the token embeddings with each run of image ids
        replaced by one image's tokens."""
        c = self.config
        embeds, is_image = embed_with_images(self.lm, input_ids, images, c.image_token_id, c.image_tokens,
                                             self.image_features)
        token = self.modality_token(is_image.any(-1)).to(embeds.dtype)
        return torch.cat((token[:, None], embeds), dim=1)

    @staticmethod
    def _with_token_column(attention_mask, position_ids=None):
        """Mask and positions with the modality token's column in front: masked (0) so no other
        token attends to it, position 0 (it is attended by nobody, so its position is moot)."""
        front = attention_mask.new_zeros(attention_mask.shape[0], 1)
        mask = torch.cat((front, attention_mask), dim=1)
        if position_ids is None:
            return mask, None
        return mask, torch.cat((position_ids.new_zeros(position_ids.shape[0], 1), position_ids), dim=1)

    def forward(self, input_ids, images, attention_mask=None, *, position_ids=None, segment_ids=None, head=True):
        """Logits [B, 1 + T, V] (position 0 is the modality token's); head=False: the final hidden
        states. One sample per row (the modality token fronts the row): segment_ids, where given,
        must not pack several (checked where the segments are on the CPU; the trainer's batches
        say so with their `packed` flag)."""
        packed = segment_ids is not None and segment_ids.device.type == "cpu" and segment_ids.numel() \
            and int(segment_ids.max()) > 1
        if packed:
            raise ValueError(PACKED_ERROR)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask, positions = self._with_token_column(attention_mask, position_ids)
        return self.lm(inputs_embeds=self.embed(input_ids, images), attention_mask=mask, position_ids=positions,
                       head=head)

    def batch_loss(self, batch):
        """(summed next-token CE, labelled-token count, None), as LLaVA.batch_loss."""
        if batch.get("packed"):
            raise ValueError(PACKED_ERROR)
        # forward, not __call__: under FSDP, batch_loss itself gathers the root's weights, and a
        # nested call's post-forward hook would free them before the head below uses them.
        hidden = self.forward(batch["input_ids"], batch["images"], batch["attention_mask"],
                              position_ids=batch["position_ids"], segment_ids=batch["segment_ids"], head=False)
        labels = torch.cat((torch.full_like(batch["labels"][:, :1], -100), batch["labels"]), dim=1)
        loss, count = self.lm.loss(hidden, labels, batch.get("n_targets"))
        return loss, count, None

    def generation_inputs(self, input_ids, images, attention_mask):
        """(inputs_embeds, attention_mask) for `generate(self.lm, ...)`: the modality token stays in
        column 0 in front of the left padding, so every row finds it at the same place."""
        mask, _ = self._with_token_column(attention_mask)
        return self.embed(input_ids, images), mask


def _rename_legacy(key):
    """vision_adapters.3.down_w -> vision.layers.3.adapter.down_w (and lm_adapters likewise)."""
    for old, new in _LEGACY_PREFIXES.items():
        if key.startswith(old):
            index, _, rest = key[len(old):].partition(".")
            return new.format(index) + rest
    return key
