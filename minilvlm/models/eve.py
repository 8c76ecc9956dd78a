"""Recipe `eve` (EVE, "Unveiling Encoder-Free Vision-Language Models"): no vision encoder at
inference. Images enter the decoder through a light patch embedder (minilvlm.models.eve_embed):
patch_embed conv -> attention pooling over small windows -> a class token and a row separator after
each row of patches -> projector. During pre-training an aligner reads the decoder's hidden states
at the patch positions of several layers, fuses them and is pulled towards a frozen teacher ViT's
patch features with a cosine loss; total loss = CE + align_weight * (1 - cos).

Stages (EVE's three):
  prealign  (1) the embedder and the aligner train, the LM is frozen
  pretrain  (2) everything trains: LM, embedder, aligner
  finetune  (3) instruction tuning: LM and embedder train; the aligner is dropped (no teacher run)

The teacher is used only by the alignment loss; `generation_inputs` never touches it, and a model
whose teacher is None (`drop_teacher()`) generates exactly as before. The teacher is frozen and kept
out of the state dict: it is reloaded from its own weights, so checkpoints carry only our tensors."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minilvlm.models.decoder import Decoder, DecoderConfig
from minilvlm.models.layers import LayerNorm
from minilvlm.models.eve_embed import PatchEmbedder, window_attention
from minilvlm.models.multimodal import attention_inputs, embed_with_images, make_projector
from minilvlm.models.vision import CLIP_MEAN, CLIP_STD, VisionConfig, VisionTransformer

STAGES = ("prealign", "pretrain", "finetune")
STAGE_HELP = "'prealign' (1: embedder + aligner, LM frozen), 'pretrain' (2: everything), " \
             "'finetune' (3: LM + embedder, no aligner)"
_ALIGNED_STAGES = ("prealign", "pretrain")


@dataclass
class EVEConfig:
    decoder: DecoderConfig
    teacher: VisionConfig | None = None   # the frozen ViT of the alignment loss (None: no aligner)
    image_size: int = 224
    patch_size: int = 14                  # the embedder's conv stride
    pool: int = 2                         # pool x pool patches -> one LM token (local attention)
    dim: int = 1024                       # the embedder's width, before the projector
    heads: int = 8                        # heads of the embedder's and the aligner's attention
    projector: str = "mlp2x_gelu"
    align_layers: tuple = ()              # LM hidden-state indices fused by the aligner; (): EVE's
    align_weight: float = 1.0             # every 4th, counting down from the last
    teacher_layer: int = -2               # the teacher's hidden state the aligner is trained towards
    image_token_id: int = -1
    pixel_mean: tuple = CLIP_MEAN         # the embedder's normalisation of uint8 images (the teacher
    pixel_std: tuple = CLIP_STD           # normalises with its own VisionConfig's)

    def __post_init__(self):
        step = self.patch_size * self.pool
        if self.image_size % step:
            raise ValueError(f"eve: image_size {self.image_size} is not a multiple of patch_size x pool "
                             f"= {self.patch_size} x {self.pool} = {step}")
        if self.dim % self.heads:
            raise ValueError(f"eve: dim {self.dim} is not a multiple of heads {self.heads}")
        n = self.decoder.n_layers + 1
        if not self.align_layers:
            self.align_layers = tuple(range(n - 1, -1, -4))
        self.align_layers = tuple(self.align_layers)
        bad = [i for i in self.align_layers if not -n <= i < n]
        if bad:
            raise ValueError(f"eve: align_layers {bad} out of range for {n} LM hidden states "
                             f"(embeddings + {n - 1} blocks)")
        if self.teacher is not None:
            t = self.teacher
            if t.image_size % t.patch_size:
                raise ValueError(f"eve: the teacher's image_size {t.image_size} is not a multiple of its "
                                 f"patch_size {t.patch_size}")
            teacher_grid = t.image_size // t.patch_size
            if self.grid % teacher_grid:
                raise ValueError(f"eve: the embedder's {self.grid}x{self.grid} token grid cannot be pooled to the "
                                 f"teacher's {teacher_grid}x{teacher_grid} patch grid; choose image_size, "
                                 f"patch_size and pool so that the first is a multiple of the second")

    @property
    def grid(self):
        """Tokens per row (and rows) of an image after pooling."""
        return self.image_size // (self.patch_size * self.pool)

    @property
    def image_tokens(self):
        """LM positions per image: the class token, then each row of patch tokens and its separator."""
        return 1 + self.grid * (self.grid + 1)


class Aligner(nn.Module):
    """LM hidden states of several layers at the patch positions -> the teacher's feature space.
    Each layer gets its own norm + projection; the first layer's projection (EVE: the deepest)
    queries all of them (one attention over layers per patch), and the result is added to a direct
    projection of the first layer's raw state."""

    def __init__(self, lm_dim, teacher_dim, n_layers, heads):
        super().__init__()
        self.heads = heads
        self.layer_proj = nn.ModuleList(nn.Sequential(LayerNorm(lm_dim), nn.Linear(lm_dim, teacher_dim, bias=False))
                                        for _ in range(n_layers))
        self.direct = nn.Linear(lm_dim, teacher_dim)
        self.out = nn.Linear(teacher_dim, teacher_dim)

    def forward(self, layers):
        """L tensors [M, D_lm], the query layer first -> predicted teacher features [M, D_teacher]."""
        projected = torch.stack([proj(h) for proj, h in zip(self.layer_proj, layers)], dim=1)   # [M, L, Dt]
        fused = window_attention(projected[:, :1], projected, projected, self.heads)          # [M, 1, Dt]
        return self.direct(layers[0]) + self.out(fused[:, 0])


class EVE(nn.Module):
    def __init__(self, config: EVEConfig):
        super().__init__()
        c = self.config = config
        self.embedder = PatchEmbedder(c.patch_size, c.pool, c.dim, c.heads, c.pixel_mean, c.pixel_std)
        self.projector = make_projector(c.projector, c.dim, c.decoder.dim)
        self.lm = Decoder(c.decoder)
        self.aligner = None
        self.teacher = None
        if c.teacher is not None:
            self.aligner = Aligner(c.decoder.dim, c.teacher.dim, len(c.align_layers), c.heads)
            self.teacher = VisionTransformer(c.teacher).requires_grad_(False).eval()
        self.stage = "pretrain" if self.aligner is not None else "finetune"

    # ---- the teacher stays frozen and out of checkpoints -------------------------------------

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "") + "teacher."
        for key in [k for k in state if k.startswith(prefix)]:
            del state[key]
        return state

    def load_state_dict(self, state_dict, strict=True, assign=False):
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not k.startswith("teacher.")]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"EVE state dict does not fit: missing {missing}, unexpected {result.unexpected_keys}")
        return result

    def train(self, mode=True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()   # no dropout today, but a frozen teacher never runs in training mode
        return self

    def drop_teacher(self):
        """Free the teacher (inference, or instruction tuning): the model no longer needs it."""
        self.teacher = None
        if self.stage in _ALIGNED_STAGES:
            self.stage = "finetune"

    # ---- stages ------------------------------------------------------------------------------

    def set_stage(self, stage, pretrain_lm=False, train_vision=False):
        """requires_grad per part for an EVE stage; returns the trained parts' names. pretrain_lm and
        train_vision are the llava recipe's switches: EVE's stages fix what trains, and its only
        vision network, the teacher, is always frozen."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r} for the eve recipe; its stages: {STAGE_HELP}")
        if stage in _ALIGNED_STAGES and (self.aligner is None or self.teacher is None):
            raise ValueError(f"eve stage {stage!r} trains the aligner towards a teacher ViT, but this model has "
                             f"no teacher; configure one (model.vision_weights) or use stage 'finetune'")
        self.stage = stage
        parts = {"embedder": True, "projector": True, "lm": stage != "prealign",
                 "aligner": stage in _ALIGNED_STAGES}
        for name, on in parts.items():
            module = getattr(self, name)
            if module is not None:
                module.requires_grad_(on)
        return [name for name, on in parts.items() if on and getattr(self, name) is not None]

    def param_groups(self, lr, projector_lr=None, vision_lr=None):
        """Optimizer groups of the trainable params: the embedder with its projector, and the aligner
        (both at projector_lr, default lr), and the LM (at lr). There is no vision tower to train,
        so vision_lr does not apply."""
        groups = []
        parts = (("projector", [self.embedder, self.projector], projector_lr), ("aligner", [self.aligner], projector_lr),
                 ("lm", [self.lm], None))
        for name, modules, group_lr in parts:
            params = [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]
            if params:
                groups.append({"params": params, "lr": lr if group_lr is None else group_lr, "name": name})
        return groups

    # ---- forward -----------------------------------------------------------------------------

    def image_embeddings(self, images):
        """uint8 [N, 3, S, S] -> [N, image_tokens, D_lm]: class token, rows with separators, projected."""
        c = self.config
        if images.dim() != 4 or images.shape[1:] != (3, c.image_size, c.image_size):
            raise ValueError(f"eve: expected images [N, 3, {c.image_size}, {c.image_size}], got {list(images.shape)}")
        return self.projector(self.embedder(images))

    def embed(self, input_ids, images):
        """(decoder input embeddings [B, T, D], image-position mask [B, T]): each run of image ids
        holds one image's tokens, images in the order their runs appear row by row."""
        return embed_with_images(self.lm, input_ids, images, self.config.image_token_id,
                                 self.config.image_tokens, self.image_embeddings)

    def forward(self, input_ids, images, attention_mask=None, *, position_ids=None, segment_ids=None):
        """Logits [B, T, V]."""
        embeds, _ = self.embed(input_ids, images)
        return self.lm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                       segment_ids=segment_ids)

    # ---- alignment ---------------------------------------------------------------------------

    def patch_states(self, hidden, is_image, n_images):
        """The aligned layers' hidden states at each image's patch positions (class token and
        separators dropped), average-pooled to the teacher's grid: [L, n_images * P_teacher, D_lm]."""
        c = self.config
        g, teacher_grid = c.grid, c.teacher.image_size // c.teacher.patch_size
        # The image positions, row by row: their number is known, so no host round trip.
        positions = torch.nonzero_static(is_image.reshape(-1), size=n_images * c.image_tokens).squeeze(1)
        out = []
        for index in c.align_layers:
            states = hidden[index].reshape(-1, hidden[index].shape[-1]).index_select(0, positions)
            h = states.view(n_images, c.image_tokens, -1)[:, 1:]
            h = h.reshape(n_images, g, g + 1, -1)[:, :, :g]                 # drop the row separators
            if g != teacher_grid:
                h = F.avg_pool2d(h.permute(0, 3, 1, 2), g // teacher_grid).permute(0, 2, 3, 1)
            out.append(h.reshape(n_images * teacher_grid ** 2, -1))
        return out

    @torch.no_grad()
    def teacher_features(self, images):
        """The frozen teacher's patch features [N * P_teacher, D_teacher] at teacher_layer."""
        t = self.config.teacher
        if t.image_size != self.config.image_size:   # resized as an image processor would: still uint8
            images = F.interpolate(images.float(), size=(t.image_size, t.image_size), mode="bilinear",
                                   align_corners=False, antialias=True).round_().clamp_(0, 255).to(torch.uint8)
        features, = self.teacher.forward_features(images, layers=[self.config.teacher_layer])
        if t.class_token:
            features = features[:, 1:]
        return features.reshape(-1, features.shape[-1])

    def alignment_loss(self, hidden, is_image, images):
        """1 - mean cosine similarity between the aligner's prediction and the teacher's features; 0 for
        no images (computed all the same, so that FSDP ranks gather the same teacher blocks)."""
        predicted = self.aligner(self.patch_states(hidden, is_image, images.shape[0]))
        target = self.teacher_features(images)
        similarity = F.cosine_similarity(predicted.float(), target.float(), dim=-1)
        return 1.0 - similarity.mean() if images.shape[0] else similarity.sum()

    # ---- the trainer's interface -------------------------------------------------------------

    def batch_loss(self, batch):
        """(summed next-token CE, labelled-token count, align_weight * (1 - cos) or None). The
        alignment term is None in stage finetune, and 0 for a micro-batch without images."""
        images = batch["images"]
        embeds, is_image = self.embed(batch["input_ids"], images)
        align = self.stage in _ALIGNED_STAGES
        mask, segments = attention_inputs(batch)
        out = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=batch["position_ids"],
                      segment_ids=segments, output_hidden_states=align, head=False)
        final, hidden = out if align else (out, None)
        loss, count = self.lm.loss(final, batch["labels"], batch.get("n_targets"))
        aux = self.config.align_weight * self.alignment_loss(hidden, is_image, images) if align else None
        return loss, count, aux

    def generation_inputs(self, input_ids, images, attention_mask):
        """(inputs_embeds, attention_mask) of left-padded prompts for `generate(self.lm, ...)`; the
        teacher is not used."""
        embeds, _ = self.embed(input_ids, images)
        return embeds, attention_mask
