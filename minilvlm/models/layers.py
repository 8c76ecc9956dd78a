"""Pieces shared by the vision tower and the decoder: norms, activations, rotary embeddings and
attention through `F.scaled_dot_product_attention`. Numerics follow the Hugging Face models we load
(fp32 statistics in RMSNorm, rotary angles in fp32), so logits agree with `transformers`."""
import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # Statistics in fp32, scale applied after casting back (as LLaMA and Qwen2 do).
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def make_norm(kind, dim, eps):
    if kind == "rms":
        return RMSNorm(dim, eps)
    if kind == "layer":
        return nn.LayerNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}: expected 'rms' or 'layer'")


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": quick_gelu,
}

# Hugging Face `hidden_act` names -> ours. gelu_new, gelu_fast and gelu_pytorch_tanh are the same
# tanh approximation written three ways; they agree to within float rounding.
HF_ACTIVATIONS = {
    "silu": "silu", "swish": "silu", "gelu": "gelu", "quick_gelu": "quick_gelu",
    "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
}


def activation(name):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}: expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


# ---- rotary position embeddings -----------------------------------------------------------------

def rope_cos_sin(position_ids, rotary_dim, theta, dtype):
    """cos and sin [B, T, rotary_dim] for integer positions [B, T]; angles computed in fp32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, device=position_ids.device).float() / rotary_dim))
    angles = position_ids.float()[..., None] * inv_freq  # [B, T, rotary_dim/2]
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x, cos, sin):
    """Rotate the first cos.shape[-1] channels of x [B, H, T, hd] (the rest pass through, which is
    Phi's partial rotary). Channel pairs are (i, i + d/2), the "rotate half" layout of HF checkpoints."""
    d = cos.shape[-1]
    rot, rest = x[..., :d], x[..., d:]
    cos, sin = cos[:, None], sin[:, None]
    first, second = rot[..., : d // 2], rot[..., d // 2:]
    rotated = torch.cat((-second, first), dim=-1)
    out = rot * cos + rotated * sin
    return torch.cat((out, rest), dim=-1) if rest.shape[-1] else out


# ---- attention masks ----------------------------------------------------------------------------

def causal_mask(attention_mask, q_len, kv_len, device, segment_ids=None):
    """Boolean mask [B or 1, 1, q_len, kv_len] (True = may attend) for queries at the last q_len of
    kv_len positions. attention_mask: None, [B, kv_len] with 1 for real tokens and 0 for padding, or
    a ready boolean [B, 1, q_len, kv_len]. segment_ids [B, kv_len] restricts attention to tokens of the
    same packed sample. Every query keeps its own position, so a padding row never attends to
    nothing (which would make SDPA return NaN); padding outputs are meaningless and ignored anyway.
    Returns None for plain causal attention over the queries alone, so SDPA can use is_causal (and
    its fastest kernels) instead of a mask."""
    if attention_mask is not None and attention_mask.dim() == 4:
        return attention_mask.to(torch.bool)
    if attention_mask is None and segment_ids is None and q_len == kv_len:
        return None
    offset = kv_len - q_len
    q_pos = torch.arange(q_len, device=device)[:, None] + offset
    k_pos = torch.arange(kv_len, device=device)[None, :]
    mask = (k_pos <= q_pos)[None, None]
    if attention_mask is not None:
        if attention_mask.shape[-1] != kv_len:
            raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} positions, but the keys "
                             f"span {kv_len} (cached + new); pass a mask over the whole sequence")
        mask = mask & attention_mask.to(torch.bool)[:, None, None, :]
    if segment_ids is not None:
        same = segment_ids[:, None, -q_len:, None] == segment_ids[:, None, None, :]
        mask = mask & same
    diagonal = (k_pos == q_pos)[None, None]
    return mask | diagonal


def attention(q, k, v, mask=None, causal=False):
    """q [B, H, T, hd]; k, v [B, Hkv, S, hd] with H a multiple of Hkv (grouped-query attention).
    mask: boolean, True = may attend; causal: plain causal attention without a mask."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
