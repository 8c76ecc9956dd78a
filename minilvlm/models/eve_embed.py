"""EVE's patch embedder, the encoder-free model's only image network:

  images -> patch_embed (normalize + p x p patches + GEMM, one fused op)   [N, G*G, D]
         -> local attention pooling: each pool x pool window of patches becomes one token, its
            mean querying the window's patches                              [N, g*g, D]
         -> a class token that queries every pooled token (global view)     [N, 1, D]
         -> a learned separator after each row of tokens, so the LM sees where rows end
  output [N, 1 + g*(g+1), D]: the class token, then row 0, separator, row 1, separator, ...

There are no position embeddings: the LM's rotary positions and the separators carry the layout,
as in EVE."""
import torch
import torch.nn.functional as F
from torch import nn

from minilvlm import ops
from minilvlm.models.layers import LayerNorm


def window_attention(q, k, v, heads):
    """Multi-head dot-product attention within each group: q [M, Lq, D], k and v [M, K, D] -> [M, Lq, D]."""
    M, Lq, D = q.shape

    def split(t):   # [M, L, D] -> [M, heads, L, D / heads]
        return t.reshape(M, t.shape[1], heads, D // heads).transpose(1, 2)
    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(M, Lq, D)


class CrossAttentionPool(nn.Module):
    """query + proj(attention(norm(query) -> norm(keys))): one pooled token per group of keys."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q_norm, self.kv_norm = LayerNorm(dim), LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query, keys):
        """query [M, 1, D], keys [M, K, D] -> [M, 1, D]."""
        k, v = self.kv(self.kv_norm(keys)).chunk(2, dim=-1)
        return query + self.proj(window_attention(self.q(self.q_norm(query)), k, v, self.heads))


class PatchEmbedder(nn.Module):
    def __init__(self, patch_size, pool, dim, heads, pixel_mean, pixel_std):
        super().__init__()
        self.patch_size, self.pool = patch_size, pool
        self.mean, self.std = tuple(pixel_mean), tuple(pixel_std)
        self.patch_weight = nn.Parameter(torch.empty(dim, 3, patch_size, patch_size))
        self.patch_bias = nn.Parameter(torch.zeros(dim))
        self.local_pool = CrossAttentionPool(dim, heads)
        self.cls_token = nn.Parameter(torch.empty(dim))
        self.global_pool = CrossAttentionPool(dim, heads)
        self.separator = nn.Parameter(torch.empty(dim))
        nn.init.normal_(self.patch_weight, std=(3 * patch_size * patch_size) ** -0.5)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.separator, std=0.02)

    def forward(self, images):
        """uint8 (or 0..1 float) [N, 3, S, S] -> [N, 1 + g*(g+1), D], g = S / (patch_size * pool)."""
        N, _, S, _ = images.shape
        k, D = self.pool, self.patch_weight.shape[0]
        x = ops.patch_embed(images, self.patch_weight, self.patch_bias, None, patch_size=self.patch_size,
                            mean=self.mean, std=self.std)                       # [N, G*G, D], row-major
        G = S // self.patch_size
        g = G // k
        windows = x.view(N, g, k, g, k, D).permute(0, 1, 3, 2, 4, 5).reshape(N * g * g, k * k, D)
        pooled = self.local_pool(windows.mean(dim=1, keepdim=True), windows).view(N, g * g, D)
        cls = self.global_pool(self.cls_token.to(pooled.dtype).expand(N, 1, D), pooled)
        separators = self.separator.to(pooled.dtype).expand(N, g, 1, D)
        rows = torch.cat([pooled.view(N, g, g, D), separators], dim=2).view(N, g * (g + 1), D)
        return torch.cat([cls.to(rows.dtype), rows], dim=1)
