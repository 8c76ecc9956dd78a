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
