"""LoRA (Hu et al.): a frozen Linear layer plus a trained low-rank update,

    y = W x + b + (alpha / rank) * B (A dropout(x)),    A [rank, in], B [out, rank], B = 0 at the start,

in plain torch matmuls. `LoRALinear` is an nn.Linear (its `weight` and `bias` keep their names, so
the key maps of minilvlm.weights and the export read them as before) with two more parameters,
`lora_a` and `lora_b`. Every tensor is a parameter of its own module, with nothing shared or
aliased, so a per-block sharding wrapper (FSDP2's fully_shard) takes a LoRA model as it takes the
plain one. A is initialised as nn.Linear initialises its weight (Kaiming uniform) and B at zero, as
peft does, so a freshly wrapped model computes exactly what it did before."""
import fnmatch
import math

import torch
import torch.nn.functional as F
from torch import nn

LORA_PARAMETERS = ("lora_a", "lora_b")


class LoRALinear(nn.Linear):
    def __init__(self, in_features, out_features, bias=True, *, rank, alpha, dropout=0.0, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    @classmethod
    def wrap(cls, linear, rank, alpha, dropout=0.0):
        """A LoRALinear holding `linear`'s own weight and bias parameters (moved, not copied)."""
        w = linear.weight
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, rank=rank, alpha=alpha,
                     dropout=dropout, device=w.device, dtype=w.dtype)
        module.weight = w
        module.bias = linear.bias
        module.train(linear.training)
        return module

    def forward(self, x):
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_a), self.lora_b)
        return F.linear(x, self.weight, self.bias) + update * self.scaling

    def delta(self):
        """The update as a full matrix, (alpha / rank) B A, [out, in]."""
        return (self.lora_b @ self.lora_a) * self.scaling

    def extra_repr(self):
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}"


def apply_lora(model, targets, rank, alpha, dropout=0.0):
    """Replace every nn.Linear of `model` whose qualified name matches one of `targets` (fnmatch
    patterns, e.g. "lm.layers.*.attn.w*") with a LoRALinear over the same weights. Returns the
    names replaced. ValueError for a pattern that matches no Linear, or a rank that is not positive."""
    if rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank}")
    names = [name for name, module in model.named_modules()
             if type(module) is nn.Linear and any(fnmatch.fnmatchcase(name, t) for t in targets)]
    unused = [t for t in targets if not any(fnmatch.fnmatchcase(n, t) for n in names)]
    if unused:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(f"LoRA targets {unused} match no Linear layer of the model; its Linear layers are named "
                         f"like {linears[:6]}")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear.wrap(getattr(parent, child), rank, alpha, dropout))
    return names


def lora_modules(model):
    """{qualified name: LoRALinear} of a model."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def has_lora(model):
    return any(isinstance(m, LoRALinear) for m in model.modules())


def is_lora_key(key):
    return key.rpartition(".")[2] in LORA_PARAMETERS


def freeze_for_lora(model):
    """After a stage has set requires_grad per part: in every top-level part that holds LoRA layers
    (the LM, by default), the LoRA matrices train instead of the part's own weights when the stage
    trains that part, and nothing of it trains otherwise. Other parts (the projector) are left as the
    stage set them."""
    parts = {name.partition(".")[0] for name in lora_modules(model)}
    for part in parts:
        module = model.get_submodule(part)
        trains = any(p.requires_grad for p in module.parameters())
        for name, param in module.named_parameters():
            param.requires_grad_(trains and is_lora_key(name))


def trainable_state_dict(model):
    """The tensors that train (requires_grad), by state-dict name: what a LoRA run's checkpoint holds."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def merged_state_dict(model):
    """The model's state dict with every LoRA update added into its weight (W + (alpha / rank) B A)
    and the LoRA matrices left out: the plain model that computes the same function."""
    state = model.state_dict()
    with torch.no_grad():
        for name, module in lora_modules(model).items():
            state[f"{name}.weight"] = (module.weight + module.delta().to(module.weight.dtype)).detach()
            for key in LORA_PARAMETERS:
                del state[f"{name}.{key}"]
    return state


def base_state_dict(model):
    """The model's state dict without the LoRA matrices (the weights as loaded, no update added)."""
    return {k: v for k, v in model.state_dict().items() if not is_lora_key(k)}
