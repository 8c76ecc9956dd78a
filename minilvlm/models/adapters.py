"""LaVIN's adapters (Luo et al., "Cheap and Quick", section 3.1): RepAdapter and the MM-Adapter.

Both run through one op, minilvlm.ops.mm_adapter: a shared down-projection A (D -> r), P
up-projections U_i (r -> D, grouped like LaVIN's `Conv1d(r, D, 1, groups)`, zero-initialised so a
fresh adapter is the identity) and, for the MM-Adapter, a router that mixes the paths per sample
from the sample's modality token:
    w = softmax((W_r t + b_r) / temperature),   out = x + scale * sum_i w_i (U_i (A x + b_A) + c_i).

Dropout on h (LaVIN trains with 0.1) is part of the fused op: while the module is training, each call
draws a fresh seed from torch's default CPU generator and the op masks h with the counter-based
Philox mask of that seed (minilvlm/ops/mm_adapter.py), so a training run is reproducible from its
seed and a resumed run (the trainer checkpoints the generator) repeats the masks bitwise.
"""
import math

import torch
from torch import nn

from minilvlm.ops import mm_adapter
from minilvlm.ops.mm_adapter import routing_weights


class ModalityToken(nn.Module):
    """The learned modality token t: one embedding for "text only" (0) and one for "has image" (1).
    kinds=1 (the routing ablation "no_token"): one embedding for every sample, which tells nothing."""

    def __init__(self, dim, kinds=2):
        super().__init__()
        self.embedding = nn.Embedding(kinds, dim)
        nn.init.normal_(self.embedding.weight, std=1.0)

    def forward(self, has_image):
        """has_image: [B] bool or 0/1 tensor -> [B, dim]."""
        return self.embedding(has_image.long().clamp(max=self.embedding.num_embeddings - 1))


class _SharedDownAdapter(nn.Module):
    """Parameters and dispatch shared by RepAdapter and MMAdapter: down_w [hidden, dim], down_b [hidden],
    up_w [paths, dim, hidden/groups] and up_b [paths, dim], in the layout of minilvlm.ops.mm_adapter."""

    def __init__(self, dim, hidden, groups, scale, dropout, paths):
        super().__init__()
        if dim % groups or hidden % groups:
            raise ValueError(f"{type(self).__name__}: groups={groups} must divide dim={dim} and hidden={hidden}")
        self.dim, self.hidden, self.groups, self.scale, self.dropout = dim, hidden, groups, scale, dropout
        self.down_w = nn.Parameter(torch.empty(hidden, dim))
        self.down_b = nn.Parameter(torch.zeros(hidden))
        self.up_w = nn.Parameter(torch.zeros(paths, dim, hidden // groups))
        self.up_b = nn.Parameter(torch.zeros(paths, dim))
        nn.init.xavier_uniform_(self.down_w)

    def _run(self, x, t, router_w, router_b, temperature):
        weights = (self.down_w, self.down_b, self.up_w, self.up_b)
        dropout = self.dropout if self.training else 0.0
        return mm_adapter(x, t, router_w, router_b, *weights, temperature=temperature, scale=self.scale,
                          groups=self.groups, dropout=dropout)

    def extra_repr(self):
        return f"dim={self.dim}, hidden={self.hidden}, groups={self.groups}, scale={self.scale}, dropout={self.dropout}"


class RepAdapter(_SharedDownAdapter):
    """The single-path adapter: out = x + scale * (U (A x + b_A) + c), the MM-Adapter with P = 1 and no router."""

    def __init__(self, dim, hidden=8, groups=2, scale=1.0, dropout=0.1):
        super().__init__(dim, hidden, groups, scale, dropout, paths=1)

    def forward(self, x, t=None):
        """x: [B, T, dim] -> [B, T, dim]. t (a router's input) is ignored: one path needs no router, and
        taking it lets a RepAdapter fill the blocks' (h, t) adapter slot (the mma "fixed" ablation)."""
        return self._run(x, None, None, None, 1.0)


class MMAdapter(_SharedDownAdapter):
    """The Mixture-of-Modality adapter: `paths` RepAdapter up-projections sharing one down-projection,
    mixed per sample by a router over the modality token t."""

    def __init__(self, dim, hidden=8, groups=2, scale=1.0, dropout=0.1, temperature=10.0, paths=2, token_dim=None):
        super().__init__(dim, hidden, groups, scale, dropout, paths)
        self.paths, self.temperature = paths, temperature
        token_dim = dim if token_dim is None else token_dim
        # nn.Linear's default initialisation for the router (LaVIN's router is an nn.Linear).
        bound = 1.0 / math.sqrt(token_dim)
        self.router_w = nn.Parameter(torch.empty(paths, token_dim).uniform_(-bound, bound))
        self.router_b = nn.Parameter(torch.empty(paths).uniform_(-bound, bound))

    def routing_weights(self, t):
        """The per-sample path weights w = softmax((W_r t + b_r) / temperature): [B, paths]."""
        return routing_weights(t, self.router_w, self.router_b, self.temperature)

    def forward(self, x, t):
        """x: [B, T, dim], t: [B, token_dim] (the modality token) -> [B, T, dim]."""
        return self._run(x, t, self.router_w, self.router_b, self.temperature)

    def extra_repr(self):
        return super().extra_repr() + f", paths={self.paths}, temperature={self.temperature}"
