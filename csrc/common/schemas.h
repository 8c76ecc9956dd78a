// schemas.h: the op schemas, as strings, so that csrc/registration.cpp (namespace minilvlm)
// and the emulator module (namespace minilvlm_emu, the CUDA kernels run on the CPU) declare
// exactly the same signatures.
#pragma once

// One AdamW step over flat buffers. Segment i is [seg_bounds[2i], seg_bounds[2i+1]) with its
// own lr, weight decay and step; grad_scale (1-element float32) multiplies every grad, for
// unscaling and clipping.
#define MINILVLM_SCHEMA_FUSED_ADAMW                                                              \
  "fused_adamw_(Tensor(a!) param, Tensor grad, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, "      \
  "Tensor(d!)? master, int[] seg_bounds, float[] seg_lr, float[] seg_wd, int[] seg_step, "       \
  "float beta1, float beta2, float eps, Tensor? grad_scale) -> ()"

// LaVIN's MM-Adapter (common/mm_adapter_host.h): out = x + scale * sum_i w_i (U_i h + c_i) with
// h = down_w x + down_b and w = softmax((router_w t + router_b) / temperature). t may be [B, 0]
// (no router; then up_w has one path and w = 1). The backward returns the gradients of
// (x, t, router_w, router_b, down_w, down_b, up_w, up_b).
#define MINILVLM_SCHEMA_MM_ADAPTER                                                                   \
  "mm_adapter(Tensor x, Tensor t, Tensor router_w, Tensor router_b, Tensor down_w, Tensor down_b, "   \
  "Tensor up_w, Tensor up_b, float temperature, float scale, int groups) -> Tensor"
#define MINILVLM_SCHEMA_MM_ADAPTER_BACKWARD                                                          \
  "mm_adapter_backward(Tensor grad_out, Tensor x, Tensor t, Tensor router_w, Tensor router_b, "       \
  "Tensor down_w, Tensor down_b, Tensor up_w, Tensor up_b, float temperature, float scale, "          \
  "int groups) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
