"""One ViT for the CLIP and SigLIP vision towers.

CLIP: a class token, a LayerNorm before the first block ("pre_layrnorm" in HF checkpoints), quick_gelu;
its final LayerNorm only normalizes the pooled class token, so the last hidden state is the raw output
of the last block. SigLIP: no class token, a conv stem with a bias, gelu-tanh, and the final LayerNorm
applied to every token. LLaVA reads the penultimate layer's patch tokens and LaVIN the class token of
every 4th layer: `forward_features(images, layers=[...])` returns chosen layers and stops early.

Images enter one way: the stem is the fused `patch_embed` op. uint8 images [B, C, S, S] are raw
pixels, which the op scales by 1/255 and normalises with the config's pixel_mean and pixel_std
inside the same pass; float images are taken as already normalised (the `pixel_values` that
`transformers` image processors produce), so the tower agrees with `transformers` on those.

Each block has an optional adapter slot (`VisionBlock.adapter`, None by default): a module
(h, t) -> h applied to the block's normed input before attention, routed on the sample's class
token (the mma recipe's MM-Adapters sit there)."""
from dataclasses import dataclass, replace

import torch
from torch import nn

from minilvlm import ops
from minilvlm.models.layers import LayerNorm, activation, attention

# CLIP's image normalisation (its preprocessor's image_mean and image_std).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class VisionConfig:
    image_size: int = 224
    patch_size: int = 14
    channels: int = 3
    dim: int = 1024
    n_layers: int = 24
    n_heads: int = 16
    mlp_dim: int = 4096
    act: str = "quick_gelu"
    norm_eps: float = 1e-5
    class_token: bool = True   # CLIP
    pre_norm: bool = True      # CLIP's LayerNorm on the embeddings
    stem_bias: bool = False    # SigLIP's conv stem has a bias, CLIP's has none
    norm_output: bool = False  # SigLIP: the final LayerNorm applies to the last hidden state
    pixel_mean: tuple = CLIP_MEAN   # per-channel normalisation of uint8 images (after scaling to 0..1)
    pixel_std: tuple = CLIP_STD

    @property
    def n_patches(self):
        return (self.image_size // self.patch_size) ** 2

    @property
    def n_positions(self):
        return self.n_patches + int(self.class_token)

    @classmethod
    def preset(cls, name, **overrides):
        if name not in VISION_PRESETS:
            raise ValueError(f"unknown vision preset {name!r}; known: {sorted(VISION_PRESETS)}")
        return replace(VISION_PRESETS[name], **overrides)


_SIGLIP = dict(act="gelu_tanh", norm_eps=1e-6, class_token=False, pre_norm=False, stem_bias=True, norm_output=True)
VISION_PRESETS = {
    "clip-vit-l-14": VisionConfig(),
    "clip-vit-l-14-336": VisionConfig(image_size=336),
    "clip-vit-b-16": VisionConfig(patch_size=16, dim=768, n_layers=12, n_heads=12, mlp_dim=3072),
    "siglip-so400m-14-384": VisionConfig(image_size=384, dim=1152, n_layers=27, n_heads=16, mlp_dim=4304, **_SIGLIP),
    "siglip-base-16-224": VisionConfig(patch_size=16, dim=768, n_layers=12, n_heads=12, mlp_dim=3072, **_SIGLIP),
}


class HiddenStates(tuple):
    """All hidden states, embeddings first (as `transformers` returns them), plus the tower's final
    output as .last_hidden_state (it differs from the last entry for SigLIP, whose output is normed)."""

    def __new__(cls, states, last_hidden_state):
        obj = super().__new__(cls, states)
        obj.last_hidden_state = last_hidden_state
        return obj


class VisionAttention(nn.Module):
    def __init__(self, c: VisionConfig):
        super().__init__()
        self.n_heads = c.n_heads
        self.wq = nn.Linear(c.dim, c.dim)
        self.wk = nn.Linear(c.dim, c.dim)
        self.wv = nn.Linear(c.dim, c.dim)
        self.wo = nn.Linear(c.dim, c.dim)

    def forward(self, x):
        B, N, D = x.shape
        q, k, v = (w(x).view(B, N, self.n_heads, D // self.n_heads).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        return self.wo(attention(q, k, v).transpose(1, 2).reshape(B, N, D))


class VisionBlock(nn.Module):
    def __init__(self, c: VisionConfig):
        super().__init__()
        self.norm1 = LayerNorm(c.dim, eps=c.norm_eps)
        self.attn = VisionAttention(c)
        self.norm2 = LayerNorm(c.dim, eps=c.norm_eps)
        self.fc1 = nn.Linear(c.dim, c.mlp_dim)
        self.fc2 = nn.Linear(c.mlp_dim, c.dim)
        self.act = activation(c.act)
        self.adapter = None   # optional (h, t) -> h after norm1, routed on the class token (models/mma.py)

    def forward(self, x):
        h = self.norm1(x)
        if self.adapter is not None:
            h = self.adapter(h, h[:, 0])
        x = x + self.attn(h)
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class VisionTransformer(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        c = self.config = config
        self.patch_weight = nn.Parameter(torch.empty(c.dim, c.channels, c.patch_size, c.patch_size))
        self.patch_bias = nn.Parameter(torch.zeros(c.dim)) if c.stem_bias else None
        self.cls_token = nn.Parameter(torch.zeros(c.dim)) if c.class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(c.n_positions, c.dim))
        self.pre_norm = LayerNorm(c.dim, eps=c.norm_eps) if c.pre_norm else None
        self.layers = nn.ModuleList(VisionBlock(c) for _ in range(c.n_layers))
        self.post_norm = LayerNorm(c.dim, eps=c.norm_eps)
        nn.init.normal_(self.patch_weight, std=c.dim ** -0.5)

    def embed(self, images):
        """Patch tokens (after the class token, with positions) of uint8 images, normalised by the
        fused stem, or of float pixel values that are already normalised."""
        c = self.config
        if images.dim() != 4 or images.shape[1:] != (c.channels, c.image_size, c.image_size):
            raise ValueError(f"expected images [B, {c.channels}, {c.image_size}, {c.image_size}], "
                             f"got {list(images.shape)}")
        raw = images.dtype == torch.uint8
        x = ops.patch_embed(images, self.patch_weight, self.patch_bias, self.pos_embed, patch_size=c.patch_size,
                            mean=c.pixel_mean if raw else None, std=c.pixel_std if raw else None,
                            cls_token=self.cls_token)
        return self.pre_norm(x) if self.pre_norm is not None else x

    def forward_features(self, images, layers):
        """Hidden states of the chosen layers, indexed as in `transformers`' hidden_states (0 is the
        embeddings, i the output of block i, negative indices count from the end). Blocks past the
        deepest chosen layer are not run."""
        n = self.config.n_layers + 1
        wanted = []
        for i in layers:
            if not -n <= i < n:
                raise ValueError(f"layer index {i} out of range for {n} hidden states (embeddings + {n - 1} blocks)")
            wanted.append(i % n)
        x = self.embed(images)
        found = {0: x}
        for i, layer in enumerate(self.layers[: max(wanted)], start=1):
            x = layer(x)
            found[i] = x
        return [found[i] for i in wanted]

    def forward(self, pixel_values, output_hidden_states=False):
        """The last hidden state [B, N, D] (patch tokens, after the class token for CLIP). With
        output_hidden_states, a HiddenStates tuple of all n_layers + 1 states."""
        x = self.embed(pixel_values)
        states = [x] if output_hidden_states else None
        for layer in self.layers:
            x = layer(x)
            if output_hidden_states:
                states.append(x)
        last = self.post_norm(x) if self.config.norm_output else x
        return HiddenStates(states, last) if output_hidden_states else last

    def pooled(self, last_hidden_state):
        """CLIP's pooled output: the class token after the final LayerNorm."""
        if not self.config.class_token:
            raise ValueError("this tower has no class token to pool (SigLIP pools with an attention head)")
        return self.post_norm(last_hidden_state[:, 0])
