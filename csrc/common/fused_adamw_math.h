// fused_adamw_math.h: what the CPU and CUDA kernels of fused_adamw_ share below ATen: the
// per-segment constants (a kernel argument) and one AdamW element update, so that both kernels
// follow torch.optim.AdamW (decoupled weight decay, bias correction) in the same order of
// operations. The constants are folded on the host in double (common/fused_adamw_host.h). Host
// code is compiled with -ffp-contract=off so that only the fmas written here are fused.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/hd.h"

namespace minilvlm {

// One contiguous run [begin, end) of a flat buffer sharing lr, weight decay and step.
struct AdamwSegment {
  int64_t begin;
  int64_t end;
  float decay;      // 1 - lr * weight_decay
  float neg_step_size;  // -lr / (1 - beta1^step)
  float bc2_sqrt;   // sqrt(1 - beta2^step)
  float pad_;       // keeps the struct 32 bytes, a multiple of 16, for the kernel-arg table
};

struct AdamwConstants {
  float beta1_weight;  // 1 - beta1, the lerp weight of exp_avg towards grad
  float beta2;
  float one_minus_beta2;
  float eps;
};

// ATen's vectorised CPU kernels fuse lerp and addcmul into one fma each; we do the same, so CPU
// results match torch.optim.AdamW bit for bit. (On a host without fma instructions fmaf is a
// libm call: slower, still exact.)
// exp_avg.lerp_(grad, w): one fma from the nearer end.
MINILVLM_HD float adamw_lerp(float from, float to, float weight) {
  return weight < 0.5f ? fmaf(weight, to - from, from) : fmaf(weight - 1.0f, to - from, to);
}

// w: the fp32 weight (the param, or its master copy); g: the already scaled grad.
// Each line is one torch op of AdamW's single-tensor path, rounded as that op rounds.
MINILVLM_HD void adamw_update(float& w, float g, float& m, float& v, const AdamwSegment& s,
                              const AdamwConstants& c) {
  w = w * s.decay;                                  // param.mul_(1 - lr * wd)
  m = adamw_lerp(m, g, c.beta1_weight);             // exp_avg.lerp_(grad, 1 - beta1)
  v = v * c.beta2;                                  // exp_avg_sq.mul_(beta2)
  v = fmaf(c.one_minus_beta2 * g, g, v);     //   .addcmul_(grad, grad, 1 - beta2)
  const float denom = sqrtf(v) / s.bc2_sqrt + c.eps;  // sqrt(v_hat) + eps
  w = w + (s.neg_step_size * m) / denom;            // param.addcdiv_(m, denom, -lr / bc1)
}

}  // namespace minilvlm
