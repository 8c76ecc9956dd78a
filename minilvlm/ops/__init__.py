"""minilvlm's ops: one module per op, each in the same seven parts (docs/design.md, "The op contract"):
the contract (module docstring), imports, the dtypes the native kernels take, private helpers, the
plain-PyTorch reference, the public function, and register_<op>(namespace), which adds the fakes and
autograd of the native ops. This package calls every register_<op> once when minilvlm._C is loaded.
"""
from minilvlm.ops._registry import backend, cpu_capability, native_available, use_native
from minilvlm.ops.fused_adamw import fused_adamw_, fused_adamw_reference, register_fused_adamw
from minilvlm.ops.linear_cross_entropy import (linear_cross_entropy, linear_cross_entropy_reference,
                                               register_linear_cross_entropy)
from minilvlm.ops.mm_adapter import mm_adapter, mm_adapter_reference, register_mm_adapter
from minilvlm.ops.patch_embed import patch_embed, patch_embed_reference, register_patch_embed
from minilvlm.ops.rope import register_rope, rope_, rope_reference, rope_tables

__all__ = ["backend", "cpu_capability", "native_available", "use_native", "fused_adamw_", "fused_adamw_reference",
           "mm_adapter", "mm_adapter_reference", "patch_embed", "patch_embed_reference"]
__all__ += ["rope_", "rope_reference", "rope_tables", "linear_cross_entropy", "linear_cross_entropy_reference"]

if native_available():
    register_fused_adamw()
    register_patch_embed()
    register_mm_adapter()
    register_rope()
    register_linear_cross_entropy()
