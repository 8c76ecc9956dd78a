// activation_math.h: the activations of minilvlm::gelu and minilvlm::swiglu and their derivatives,
// as scalar float functions shared by the CPU kernels' baseline path (csrc/cpu/gelu.cpp,
// csrc/cpu/swiglu.cpp) and the CUDA kernels (csrc/cuda/gelu_kernels.cuh, swiglu_kernels.cuh). The
// CPU's AVX-512 path has its own vector forms of the same formulas (csrc/cpu/vec_math.h). No ATen,
// no CUDA runtime.
//
//   erf   gelu(x) = x * Phi(x),  Phi(x) = erfc(-x / sqrt2) / 2 (the normal CDF; erfc keeps the
//         negative tail accurate), gelu'(x) = Phi(x) + x * phi(x), phi(x) = exp(-x^2/2) / sqrt(2 pi)
//   tanh  gelu(x) = x/2 * (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3). Since 1 + tanh(u) is
//         2 sigmoid(2u), this is x * sigmoid(a) with a = 2u, without tanh's cancellation near 0
//   quick x * sigmoid(1.702 x) (CLIP)
// The two sigmoid forms share x * sigmoid(a(x)), whose derivative is s + x s (1 - s) a'(x).
#pragma once

#include <math.h>

#include "common/hd.h"

namespace minilvlm {

enum class GeluKind : int { kErf = 0, kTanh = 1, kQuick = 2 };

constexpr float kSqrtHalf = 0.70710678118654752f;     // 1 / sqrt(2)
constexpr float kInvSqrt2Pi = 0.39894228040143268f;   // 1 / sqrt(2 pi)
constexpr float kTanhGeluScale = 1.5957691216057308f;  // 2 sqrt(2/pi): a = kTanhGeluScale (x + c x^3)
constexpr float kTanhGeluCubic = 0.044715f;
constexpr float kQuickGeluScale = 1.702f;

MINILVLM_HD float sigmoid_of(float a) { return 1.0f / (1.0f + expf(-a)); }

// a(x) and a'(x) of the sigmoid forms.
template <GeluKind K>
MINILVLM_HD float gelu_arg(float x) {
  if constexpr (K == GeluKind::kTanh) return kTanhGeluScale * (x + kTanhGeluCubic * x * x * x);
  return kQuickGeluScale * x;
}
template <GeluKind K>
MINILVLM_HD float gelu_arg_slope(float x) {
  if constexpr (K == GeluKind::kTanh) return kTanhGeluScale * (1.0f + 3.0f * kTanhGeluCubic * x * x);
  return kQuickGeluScale;
}

template <GeluKind K>
MINILVLM_HD float gelu_value(float x) {
  if constexpr (K == GeluKind::kErf) return x * (0.5f * erfcf(-x * kSqrtHalf));
  return x * sigmoid_of(gelu_arg<K>(x));
}

// d gelu / dx at x.
template <GeluKind K>
MINILVLM_HD float gelu_slope(float x) {
  if constexpr (K == GeluKind::kErf) return 0.5f * erfcf(-x * kSqrtHalf) + x * (kInvSqrt2Pi * expf(-0.5f * x * x));
  const float s = sigmoid_of(gelu_arg<K>(x));
  return s + x * (s * (1.0f - s)) * gelu_arg_slope<K>(x);
}

// swiglu: y = silu(g) u = g sigmoid(g) u;  dy/dg = u s (1 + g (1 - s)),  dy/du = g s.
MINILVLM_HD float swiglu_value(float g, float u) { return g * sigmoid_of(g) * u; }

struct SwigluGrads {
  float gate, up;
};
MINILVLM_HD SwigluGrads swiglu_grads(float dy, float g, float u) {
  const float s = sigmoid_of(g);
  return {dy * u * (s * (1.0f + g * (1.0f - s))), dy * (g * s)};
}

}  // namespace minilvlm
