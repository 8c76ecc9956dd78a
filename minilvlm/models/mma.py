"""Recipe `mma`: LaVIN's Mixture-of-Modality Adaptation (Luo et al., "Cheap and Quick", section 3).

A frozen ViT and a frozen decoder LM, bridged and adapted by small trained modules only:
- an MM-Adapter (minilvlm.models.adapters.MMAdapter) between the pre-attention norm and the
  attention of EVERY ViT block (up to the deepest one read) and EVERY LM block. The adapters are attached with forward hooks on
  the existing blocks' norms, so the base modules, their code and their state-dict keys
  (`vision.*`, `lm.*`, as in the llava recipe) stay untouched;
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
cache, the decode steps no longer see position 0, so each layer's router input is kept on the
cache at prefill and reused.
"""
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from minilvlm.io import atomic_save_safetensors
from minilvlm.models.adapters import MMAdapter, ModalityToken
from minilvlm.models.decoder import Decoder, DecoderConfig
from minilvlm.models.lvlm import CLIP_MEAN, CLIP_STD
from minilvlm.models.vision import VisionConfig, VisionTransformer

ADAPTER_PREFIXES = ("vision_adapters.", "lm_adapters.", "modality_token.", "visual_adapter.")


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
    pixel_mean: tuple = CLIP_MEAN
    pixel_std: tuple = CLIP_STD

    def __post_init__(self):
        if not self.vision.class_token:
            raise ValueError("the mma recipe reads the ViT's class tokens; this tower has none (SigLIP?)")
        n = self.vision.n_layers
        bad = [i for i in self.vision_layers if not 1 <= i <= n]
        if not self.vision_layers or bad:
            raise ValueError(f"vision_layers {list(self.vision_layers)}: give block outputs 1..{n} "
                             f"(the tower has {n} blocks)")

    @property
    def image_tokens(self):
        """LM tokens per image: one per chosen ViT layer."""
        return len(self.vision_layers)


class MMA(nn.Module):
    """The LaVIN model. `vision` and `lm` may be passed already loaded (from Hugging Face folders);
    otherwise they are built from the config, to be filled by `load_base`."""

    def __init__(self, config: MMAConfig, vision=None, lm=None):
        super().__init__()
        self.config = c = config
        self.vision = vision if vision is not None else VisionTransformer(c.vision)
        self.lm = lm if lm is not None else Decoder(c.decoder)
        adapter = dict(hidden=c.hidden, groups=c.groups, scale=c.scale, dropout=c.dropout, temperature=c.temperature)
        # Blocks past the deepest chosen layer never run, so they get no adapter.
        self.vision_adapters = nn.ModuleList(MMAdapter(c.vision.dim, **adapter) for _ in range(max(c.vision_layers)))
        self.lm_adapters = nn.ModuleList(MMAdapter(c.decoder.dim, **adapter) for _ in self.lm.layers)
        self.modality_token = ModalityToken(c.decoder.dim)
        self.visual_adapter = nn.Sequential(nn.Linear(c.vision.dim, c.visual_hidden), nn.SiLU(),
                                            nn.Linear(c.visual_hidden, c.decoder.dim))
        self.register_buffer("pixel_mean", torch.tensor(c.pixel_mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(c.pixel_std).view(1, 3, 1, 1) * 255, persistent=False)
        self._attach_adapters()

    # ---- adapters on the frozen blocks ------------------------------------------------------

    def _attach_adapters(self):
        for block, adapter in zip(self.vision.layers, self.vision_adapters):
            # ViT: route each sample on its own (normed) class token.
            block.norm1.register_forward_hook(lambda _m, _a, h, adapter=adapter: adapter(h, h[:, 0]))
        # LM: after attn_norm. In a parallel block (Phi) that norm also feeds the MLP, so there the
        # adapter reaches both; LLaMA (LaVIN's LM) has a norm of its own before the MLP.
        for i, (block, adapter) in enumerate(zip(self.lm.layers, self.lm_adapters)):
            tap = _RouterTap(i, adapter)
            block.register_forward_pre_hook(tap.see_cache)
            block.attn_norm.register_forward_hook(tap.adapt)

    def routing_weights(self, input_ids=None, has_image=None):
        """The first LM adapter's path weights [B, paths] (the deeper ones read evolved states)."""
        if has_image is None:
            has_image = (input_ids == self.config.image_token_id).any(-1)
        # .forward, not __call__: the norm's own hook would run the adapter.
        t = self.lm.layers[0].attn_norm.forward(self.modality_token(has_image))
        return self.lm_adapters[0].routing_weights(t)

    # ---- training setup (the trainer's interface) -------------------------------------------

    def set_stage(self, stage, pretrain_lm=False, train_vision=False):
        """Only the adapters train; the ViT and the LM stay frozen. Returns the trained parts."""
        if pretrain_lm or train_vision:
            raise ValueError("the mma recipe keeps the ViT and the LM frozen: set train.pretrain_lm = false "
                             "and train.train_vision = false")
        self.requires_grad_(False)
        parts = [p.rstrip(".") for p in ADAPTER_PREFIXES]
        for name in parts:
            getattr(self, name).requires_grad_(True)
        return parts

    def param_groups(self, lr, projector_lr=None, vision_lr=None):
        """One group of every trainable adapter tensor (LaVIN trains them all at one lr)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "name": "adapters"}]

    # ---- adapter-only checkpoints -----------------------------------------------------------

    def trainable_state_dict(self):
        """The adapter tensors alone (a few MB for LLaMA-7B); the base comes from its own files."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(ADAPTER_PREFIXES)}

    def load_trainable_state_dict(self, tensors, source="adapter checkpoint"):
        expected = self.trainable_state_dict()
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        shapes = sorted(f"{k}: {tuple(tensors[k].shape)} vs {tuple(v.shape)}"
                        for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape)
        if missing or unexpected or shapes:
            raise ValueError(f"{source} does not fit this model (adapter settings or base sizes differ?): "
                             f"missing {missing[:8]}, unexpected {unexpected[:8]}, wrong shapes {shapes[:8]}")
        self.load_state_dict(tensors, strict=False)

    def save_adapters(self, path):
        atomic_save_safetensors({k: v.contiguous() for k, v in self.trainable_state_dict().items()}, path)

    def load_adapters(self, path):
        self.load_trainable_state_dict(load_file(str(path)), str(path))

    def load_base(self, path):
        """The frozen ViT and LM from a minilvlm training checkpoint of the llava recipe (a
        step_NNNNNN folder or its model.safetensors): its `vision.*` and `lm.*` tensors."""
        path = Path(path)
        file = path / "model.safetensors" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"base weights {path}: {file} not found; point model.mma.base_checkpoint at a "
                                    f"checkpoint folder such as runs/demo/checkpoints/step_001000")
        own = {k: v for k, v in self.state_dict().items() if k.startswith(("vision.", "lm."))}
        with safe_open(str(file), "pt") as f:
            keys = set(f.keys())
            missing = sorted(set(own) - keys)
            shapes = sorted(f"{k}: {tuple(f.get_slice(k).get_shape())} vs {tuple(own[k].shape)}"
                            for k in own if k in keys and tuple(f.get_slice(k).get_shape()) != tuple(own[k].shape))
            if missing or shapes:
                raise ValueError(f"{file} does not hold this model's base (model.vision / model.decoder sizes "
                                 f"differ?): missing {missing[:8]}, wrong shapes {shapes[:8]}")
            tensors = {k: f.get_tensor(k) for k in own}
        self.load_state_dict(tensors, strict=False)
        return file

    # ---- forward ----------------------------------------------------------------------------

    def image_features(self, images):
        """uint8 [N, 3, S, S] -> [N, len(vision_layers), D_lm]: the chosen layers' class tokens,
        normed by CLIP's pooling norm (it puts the layers on one scale), through the visual adapter."""
        pixels = (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        states = self.vision.forward_features(pixels, layers=list(self.config.vision_layers))
        cls = torch.stack([s[:, 0] for s in states], dim=1)
        return self.visual_adapter(self.vision.post_norm(cls))

    def embed(self, input_ids, images):
        """[B, 1 + T, D]: the modality token, then the token embeddings with each run of image ids
        replaced by one image's tokens."""
        c = self.config
        is_image = input_ids == c.image_token_id
        expected = images.shape[0] * c.image_tokens
        if int(is_image.sum()) != expected:
            raise ValueError(f"the batch has {int(is_image.sum())} image tokens but {images.shape[0]} image(s) x "
                             f"{c.image_tokens} tokens = {expected}; were the records encoded with "
                             f"image_tokens={c.image_tokens}?")
        embeds = self.lm.embed(input_ids.masked_fill(is_image, 0))
        if images.shape[0]:
            features = self.image_features(images).to(embeds.dtype)
            embeds = embeds.masked_scatter(is_image.unsqueeze(-1), features.reshape(-1, features.shape[-1]))
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
        """Logits [B, 1 + T, V] (position 0 is the modality token's); head=False: the final hidden states."""
        if segment_ids is not None and segment_ids.numel() and int(segment_ids.max()) > 1:
            raise ValueError("the mma recipe puts one modality token in front of each row, but this batch packs "
                             "several samples per row; turn packing off")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask, positions = self._with_token_column(attention_mask, position_ids)
        return self.lm(inputs_embeds=self.embed(input_ids, images), attention_mask=mask, position_ids=positions,
                       head=head)

    def batch_loss(self, batch, images):
        """(summed next-token CE, labelled-token count, None), as LLaVA.batch_loss."""
        hidden = self(batch["input_ids"], images, batch["attention_mask"], position_ids=batch["position_ids"],
                      segment_ids=batch["segment_ids"], head=False)
        labels = torch.cat((torch.full_like(batch["labels"][:, :1], -100), batch["labels"]), dim=1)
        loss, count = self.lm.loss(hidden, labels)
        return loss, count, None

    def generation_inputs(self, input_ids, images, attention_mask):
        """(inputs_embeds, attention_mask) for `generate(self.lm, ...)`: the modality token stays in
        column 0 in front of the left padding, so every row finds it at the same place."""
        mask, _ = self._with_token_column(attention_mask)
        return self.embed(input_ids, images), mask


class _RouterTap:
    """The hooks that put one MM-Adapter after an LM block's attention norm. The router input is the
    normed hidden state at position 0 (the modality token). Prefill and training see it in the
    sequence; decode steps with a KV cache do not, so prefill leaves it on the cache."""

    def __init__(self, layer, adapter):
        self.layer, self.adapter, self.cache = layer, adapter, None

    def see_cache(self, block, args):
        # Block.forward(x, cos, sin, mask, cache): the decoder passes them positionally.
        self.cache = args[4] if len(args) > 4 else None

    def adapt(self, norm, args, h):
        cache, self.cache = self.cache, None
        if cache is not None and cache.length > 0:
            t = cache.router_tokens[self.layer]
        else:
            t = h[:, 0]
            if cache is not None:
                if not hasattr(cache, "router_tokens"):
                    cache.router_tokens = {}
                cache.router_tokens[self.layer] = t
        return self.adapter(h, t)
