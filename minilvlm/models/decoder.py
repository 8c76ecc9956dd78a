"""One decoder-only language model covering LLaMA/Vicuna (RMSNorm, RoPE, SwiGLU, grouped-query
attention), Qwen2 (the same with q/k/v biases) and Phi-2 (LayerNorm, partial rotary, attention and
MLP in parallel off one norm, gelu_new, biases everywhere). The differences are config fields, not
subclasses. Hugging Face checkpoints load through minilvlm.weights.

Each block has an optional adapter slot (`Block.adapter`, None by default): a module (h, t) -> h
applied to the output of the block's attention norm, routed on t, the normed state at position 0
of the sequence (where the mma recipe puts its modality token). Decode steps with a KV cache no
longer see position 0, so prefill keeps each layer's t in the cache (`KVCache.router_inputs`)."""
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from minilvlm.ops import rope_heads_, swiglu
from torch.utils.checkpoint import checkpoint

from minilvlm.models.layers import LayerNorm, activation, attention, causal_mask, make_norm, rope_cos_sin
from minilvlm.models.loss import head_cross_entropy


@dataclass
class DecoderConfig:
    vocab_size: int = 32000
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None      # None: as many as n_heads (no grouping)
    head_dim: int | None = None        # None: dim // n_heads
    mlp_dim: int = 11008
    mlp: str = "swiglu"                # "swiglu" (gate, up, down) or "plain" (fc1, act, fc2)
    act: str = "silu"
    norm: str = "rms"                  # "rms" or "layer"
    norm_eps: float = 1e-6
    parallel_block: bool = False       # Phi: x + attn(norm(x)) + mlp(norm(x)), one norm per block
    rope_theta: float = 10000.0
    rotary_fraction: float = 1.0       # Phi-2 rotates 40% of each head's channels
    qkv_bias: bool = False
    out_bias: bool = False             # attention output projection
    mlp_bias: bool = False
    lm_head_bias: bool = False
    qk_norm: bool = False              # LayerNorm on each head's q and k (some Phi variants)
    tie_embeddings: bool = False
    max_seq_len: int = 4096

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")

    @property
    def rotary_dim(self):
        return int(self.head_dim * self.rotary_fraction)

    @classmethod
    def preset(cls, name, **overrides):
        if name not in DECODER_PRESETS:
            raise ValueError(f"unknown decoder preset {name!r}; known: {sorted(DECODER_PRESETS)}")
        return replace(DECODER_PRESETS[name], **overrides)


_PHI = dict(mlp="plain", act="gelu_tanh", norm="layer", norm_eps=1e-5, parallel_block=True, qkv_bias=True,
            out_bias=True, mlp_bias=True, lm_head_bias=True)
DECODER_PRESETS = {
    "llama-7b": DecoderConfig(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, mlp_dim=11008, max_seq_len=2048),
    "vicuna-7b-v1.5": DecoderConfig(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, mlp_dim=11008, norm_eps=1e-5),
    "llama-13b": DecoderConfig(vocab_size=32000, dim=5120, n_layers=40, n_heads=40, mlp_dim=13824, max_seq_len=2048),
    "qwen2-0.5b": DecoderConfig(vocab_size=151936, dim=896, n_layers=24, n_heads=14, n_kv_heads=2, mlp_dim=4864,
                                rope_theta=1e6, qkv_bias=True, tie_embeddings=True, max_seq_len=32768),
    "qwen2-1.5b": DecoderConfig(vocab_size=151936, dim=1536, n_layers=28, n_heads=12, n_kv_heads=2, mlp_dim=8960,
                                rope_theta=1e6, qkv_bias=True, tie_embeddings=True, max_seq_len=32768),
    "phi-2": DecoderConfig(vocab_size=51200, dim=2560, n_layers=32, n_heads=32, mlp_dim=10240,
                           rotary_fraction=0.4, max_seq_len=2048, **_PHI),
}


class KVCache:
    """Preallocated keys and values for every layer, [B, Hkv, max_len, hd] each. All rows share one
    length: batched prompts are left-padded, so new tokens land at the same column in every row."""

    def __init__(self, config, batch, max_len, dtype=torch.float32, device="cpu"):
        shape = (batch, config.n_kv_heads, max_len, config.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.length = 0
        self.max_len = max_len
        # Per layer, the input of the layer's adapter router, kept from prefill (see Block.router_input).
        self.router_inputs = [None] * config.n_layers

    def update(self, layer, k, v):
        """Write k, v [B, Hkv, T, hd] after the cached positions; return all keys and values so far."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} needed. Allocate a larger cache")
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class Attention(nn.Module):
    def __init__(self, c: DecoderConfig, layer_idx: int):
        super().__init__()
        self.c, self.layer_idx = c, layer_idx
        self.wq = nn.Linear(c.dim, c.n_heads * c.head_dim, bias=c.qkv_bias)
        self.wk = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.wv = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.wo = nn.Linear(c.n_heads * c.head_dim, c.dim, bias=c.out_bias)
        if c.qk_norm:
            self.q_norm = LayerNorm(c.head_dim, eps=c.norm_eps)
            self.k_norm = LayerNorm(c.head_dim, eps=c.norm_eps)

    def forward(self, x, cos, sin, mask, cache=None):
        B, T, _ = x.shape
        hd = self.c.head_dim
        q, k, v = self.wq(x), self.wk(x), self.wv(x)
        if self.c.qk_norm:   # per head, over head_dim
            q = self.q_norm(q.view(B, T, -1, hd)).view(B, T, -1)
            k = self.k_norm(k.view(B, T, -1, hd)).view(B, T, -1)
        # Rotated as the projections lie ([B, T, H * hd]), then viewed as heads [B, H, T, hd].
        q, k = rope_heads_(q, cos, sin, hd), rope_heads_(k, cos, sin, hd)
        q, k, v = (t.view(B, T, -1, hd).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        out = attention(q, k, v, mask, causal=True)
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, c: DecoderConfig):
        super().__init__()
        self.swiglu = c.mlp == "swiglu"
        self.act = activation(c.act)
        self.fused_swiglu = self.swiglu and c.act == "silu"
        if self.swiglu:
            self.w_gate = nn.Linear(c.dim, c.mlp_dim, bias=c.mlp_bias)
        elif c.mlp != "plain":
            raise ValueError(f"unknown mlp {c.mlp!r}: expected 'swiglu' or 'plain'")
        self.w_up = nn.Linear(c.dim, c.mlp_dim, bias=c.mlp_bias)
        self.w_down = nn.Linear(c.mlp_dim, c.dim, bias=c.mlp_bias)

    def forward(self, x):
        if self.fused_swiglu:   # silu(gate) * up in one pass, forward and backward (minilvlm/ops/swiglu.py)
            h = swiglu(self.w_gate(x), self.w_up(x))
        else:
            h = self.act(self.w_gate(x)) * self.w_up(x) if self.swiglu else self.act(self.w_up(x))
        return self.w_down(h)


class Block(nn.Module):
    def __init__(self, c: DecoderConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.parallel = c.parallel_block
        self.attn_norm = make_norm(c.norm, c.dim, c.norm_eps)
        self.attn = Attention(c, layer_idx)
        if not self.parallel:
            self.mlp_norm = make_norm(c.norm, c.dim, c.norm_eps)
        self.mlp = MLP(c)
        # Optional (h, t) -> h after attn_norm (models/mma.py puts an MM-Adapter here). In a parallel
        # block (Phi) that norm also feeds the MLP, so the adapter reaches both.
        self.adapter = None

    def router_input(self, h, cache):
        """The adapter's router input: the normed state at position 0, or, in a decode step, the one
        prefill left in the cache."""
        if cache is not None and cache.length > 0:
            return cache.router_inputs[self.layer_idx]
        t = h[:, 0]
        if cache is not None:
            cache.router_inputs[self.layer_idx] = t
        return t

    def forward(self, x, cos, sin, mask, cache=None):
        h = self.attn_norm(x)
        if self.adapter is not None:
            h = self.adapter(h, self.router_input(h, cache))
        if self.parallel:
            return x + self.attn(h, cos, sin, mask, cache) + self.mlp(h)
        # The residual add and mlp_norm in one pass: (normed, x + attention output).
        h, x = self.mlp_norm(self.attn(h, cos, sin, mask, cache), residual=x)
        return x + self.mlp(h)


class Decoder(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = make_norm(config.norm, config.dim, config.norm_eps)
        # A tied head reuses the embedding matrix, so it has no parameter (and no checkpoint key).
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.dim, config.vocab_size,
                                                                    bias=config.lm_head_bias)
        self.activation_checkpointing = False

    def new_cache(self, batch, max_len, dtype=None, device=None):
        p = self.embed.weight
        return KVCache(self.config, batch, max_len, dtype or p.dtype, device or p.device)

    def logits(self, h):
        return F.linear(h, *self.head_weight())

    def head_weight(self):
        """(weight [V, D], bias [V] or None) of the LM head; a tied head is the embedding matrix."""
        if self.lm_head is None:
            return self.embed.weight, None
        return self.lm_head.weight, self.lm_head.bias

    def loss(self, hidden, labels, count=None):
        """(summed next-token CE, labelled-position count) from final hidden states (as returned by
        `forward(..., head=False)`), without materializing the logits; see models/loss.py. `count`:
        the labelled positions when the caller knows them (no host round trip then)."""
        weight, bias = self.head_weight()
        return head_cross_entropy(hidden, labels, weight, bias, count=count)

    def forward(self, input_ids=None, attention_mask=None, *, position_ids=None, inputs_embeds=None,
                cache=None, segment_ids=None, output_hidden_states=False, head=True):
        """Logits [B, T, V]. attention_mask [B, S] marks real tokens (1) and padding (0) over the whole
        sequence including cached positions, or is a boolean [B, 1, T, S]. position_ids [B, T] default to
        cached length + 0..T-1 in every row, as `transformers` does; left-padded or packed batches pass
        their own (and segment_ids [B, T] to keep packed samples apart). With a cache, new keys and
        values are appended and cache.length advances by T. With output_hidden_states, returns
        (logits, hidden_states): the embeddings, each block's output, the last one after the final norm.
        head=False returns the final normed hidden states [B, T, D] in place of the logits (for `loss`)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        B, T, _ = x.shape
        past = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = (torch.arange(T, device=x.device) + past).expand(B, T)
        cos, sin = rope_cos_sin(position_ids, self.config.rotary_dim, self.config.rope_theta, x.dtype)
        mask = causal_mask(attention_mask, T, past + T, x.device, segment_ids)
        hidden = [x] if output_hidden_states else None
        for layer in self.layers:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, cos, sin, mask, cache, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache)
            if output_hidden_states:
                hidden.append(x)
        if cache is not None:
            cache.length += T
        x = self.norm(x)
        out = self.logits(x) if head else x
        if output_hidden_states:
            hidden[-1] = x
            return out, tuple(hidden)
        return out
