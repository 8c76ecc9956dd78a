"""Pieces shared by the vision tower and the decoder: norms, activations, rotary embeddings and
attention through `F.scaled_dot_product_attention`. Numerics follow the Hugging Face models we load
(fp32 statistics in the norms, rotary angles in fp32); the norms, activations and rotary
embeddings run as minilvlm ops (minilvlm/ops/), so logits agree with `transformers`."""
import torch
import torch.nn.functional as F
from torch import nn

from minilvlm.ops import gelu, rms_norm, rms_norm_reference, rope_tables


class RMSNorm(nn.Module):
    """LLaMA/Qwen2's RMSNorm through the rms_norm op (minilvlm/ops/rms_norm.py): statistics in fp32,
    the normalized value cast back to the input's dtype before the weight scales it. `forward(x,
    residual)` also adds the residual stream in the same pass and returns (y, x + residual)."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x, residual=None):
        if x.dtype != self.weight.dtype and (residual is None or residual.dtype == x.dtype):
            # A half-precision x beside an fp32 weight (autocast): LLaMA rounds the normalized x to
            # x's dtype before the fp32 weight scales it, which the op (one common dtype) cannot do.
            y, stream = rms_norm_reference(x, self.weight, self.eps, residual)
        else:
            y, stream = rms_norm(x, self.weight, self.eps, residual=residual)
        return y if residual is None else (y, stream)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters and checkpoint keys). `forward(x, residual)` adds the residual
    first and returns (y, x + residual), like RMSNorm. It runs torch's own layer_norm, not our
    layer_norm op: on the CPU, torch's fused kernel is the faster of the two at the models' widths
    (docs/benchmarks.md: ours is 0.53-1.14x of it), and on CUDA both are one pass each way."""

    def forward(self, x, residual=None):
        stream = x if residual is None else x + residual
        y = F.layer_norm(stream, self.normalized_shape, self.weight, self.bias, self.eps)
        return y if residual is None else (y, stream)


def make_norm(kind, dim, eps):
    if kind == "rms":
        return RMSNorm(dim, eps)
    if kind == "layer":
        return LayerNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}: expected 'rms' or 'layer'")


def quick_gelu(x):
    return gelu(x, "quick")


# The tanh and quick forms through the gelu op (minilvlm/ops/gelu.py), one pass forward and one
# backward, where it beats torch's composition; the erf form through torch's own F.gelu, which is
# faster than our op for it on the CPU; silu's one use (SwiGLU) goes through the swiglu op
# (models/decoder.py, MLP).
ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: gelu(x, "tanh"),
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
    """cos and sin [B, T, rotary_dim / 2] for integer positions [B, T], angles computed in fp32: the
    tables of the rope op (minilvlm/ops/rope.py), made once per forward and shared by every layer.
    They are fp32 whatever the model's dtype (fp64 for an fp64 model): the rotation runs in fp32."""
    return rope_tables(position_ids, rotary_dim, theta, dtype)


# ---- attention masks ----------------------------------------------------------------------------

def causal_mask(attention_mask, q_len, kv_len, device, segment_ids=None):
    """Boolean mask [B or 1, 1, q_len, kv_len] (True = may attend) for queries at the last q_len of
    kv_len positions, or None for plain causal attention over the queries alone (no mask and no
    segments, no cache), which lets SDPA use is_causal and its fastest kernels.

    attention_mask: None, [B, kv_len] with 1 for real tokens and 0 for padding, or a ready boolean
    [B, 1, q_len, kv_len]. segment_ids [B, kv_len] restricts attention to tokens of the same packed
    sample. Every query keeps its own position, so a padding row never attends to nothing (which
    would make SDPA return NaN); padding outputs are meaningless and ignored anyway.

    The mask never looks at the values of its inputs (that would make the host wait for the
    device): a caller that knows its batch is right-padded and unpacked (the trainer's batches say
    so: `packed` is False) passes no mask and gets plain causal attention, which gives every real
    token exactly what the full mask would."""
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
