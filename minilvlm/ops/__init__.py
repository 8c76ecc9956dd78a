"""minilvlm's ops: one module per op, each in the same seven parts (docs/design.md, "The op contract"):
the contract (module docstring), imports, the dtypes the native kernels take, private helpers, the
plain-PyTorch reference, the public function, and register_<op>(namespace), which adds the fakes and
autograd of the native ops. This package calls every register_<op> once when minilvlm._C is loaded.
"""
from minilvlm.ops._registry import (backend, cpu_capability, cuda_archs, has_kernel_image, native_available,
                                    reset_kernel_image_checks, use_native)
from minilvlm.ops.fused_adamw import (fused_adamw_, fused_adamw_multi_, fused_adamw_multi_reference,
                                      fused_adamw_reference, register_fused_adamw)
from minilvlm.ops.gelu import gelu, gelu_reference, register_gelu
from minilvlm.ops.layer_norm import layer_norm, layer_norm_reference, register_layer_norm
from minilvlm.ops.linear_cross_entropy import (linear_cross_entropy, linear_cross_entropy_reference,
                                               register_linear_cross_entropy)
from minilvlm.ops.mm_adapter import mm_adapter, mm_adapter_reference, register_mm_adapter
from minilvlm.ops.patch_embed import patch_embed, patch_embed_reference, register_patch_embed
from minilvlm.ops.rms_norm import register_rms_norm, rms_norm, rms_norm_reference
from minilvlm.ops.rope import register_rope, rope_, rope_heads_, rope_reference, rope_tables
from minilvlm.ops.swiglu import register_swiglu, swiglu, swiglu_reference

__all__ = ["backend", "cpu_capability", "cuda_archs", "has_kernel_image", "native_available",
           "reset_kernel_image_checks", "use_native", "fused_adamw_", "fused_adamw_reference", "fused_adamw_multi_",
           "fused_adamw_multi_reference",
           "mm_adapter", "mm_adapter_reference", "patch_embed", "patch_embed_reference"]
__all__ += ["gelu", "gelu_reference", "layer_norm", "layer_norm_reference", "rms_norm", "rms_norm_reference",
            "swiglu", "swiglu_reference"]
__all__ += ["rope_", "rope_heads_", "rope_reference", "rope_tables", "linear_cross_entropy", "linear_cross_entropy_reference"]

if native_available():
    register_fused_adamw()
    register_patch_embed()
    register_mm_adapter()
    register_rms_norm()
    register_layer_norm()
    register_swiglu()
    register_gelu()
    register_rope()
    register_linear_cross_entropy()
