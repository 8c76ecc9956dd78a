"""LaVIN's own way of computing the MM-Adapter, for parity tests and the benchmark: a 1x1 Conv1d
down, two grouped 1x1 Conv1d up, a softmax router and a weighted sum with the residual.
Written from the paper's description; it takes the op's parameter layout."""
import torch
import torch.nn.functional as F


def lavin_composition(x, t, router_w, router_b, down_w, down_b, up_w, up_b, *, temperature, scale, groups):
    w = torch.softmax((t @ router_w.t() + router_b) / temperature, dim=-1)      # [B, 2]
    xc = x.transpose(1, 2)                                                       # [B, D, T]
    h = F.conv1d(xc, down_w[:, :, None], down_b)                                 # [B, r, T]
    path0 = F.conv1d(h, up_w[0][:, :, None], up_b[0], groups=groups)             # [B, D, T]
    path1 = F.conv1d(h, up_w[1][:, :, None], up_b[1], groups=groups)
    mixed = path0 * w[:, 0, None, None] + path1 * w[:, 1, None, None]
    return (xc + scale * mixed).transpose(1, 2)
