"""minilvlm's ops: one file per op, each with its public function, plain-PyTorch reference and
fake (meta) registration. See DESIGN.md, "The op contract"."""
from minilvlm.ops._registry import backend, cpu_capability, native_available, use_native
from minilvlm.ops.fused_adamw import fused_adamw_, fused_adamw_reference
from minilvlm.ops.mm_adapter import mm_adapter, mm_adapter_reference
from minilvlm.ops.patch_embed import patch_embed, patch_embed_reference

__all__ = ["backend", "cpu_capability", "native_available", "use_native", "fused_adamw_", "fused_adamw_reference",
           "mm_adapter", "mm_adapter_reference", "patch_embed", "patch_embed_reference"]
