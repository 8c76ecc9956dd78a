// gelu.cpp: the CPU kernel of minilvlm::gelu and gelu_backward in its three forms: the exact erf
// GELU, the tanh approximation (Phi's gelu_new, SigLIP) and quick_gelu (CLIP), the math of
// common/activation_math.h.
//
// One streaming pass each way; only x is saved for the backward. Memory traffic per element:
// forward 2 (x in, y out), backward 3 (grad, x in, grad_x out). The passes are limited by the
// math as much as by memory, so the vector forms are lean: the tanh and quick forms are
// x * sigmoid(a(x)) (one exp, one division), the erf form takes the normal CDF from one exp and a
// degree-9 polynomial (cpu/vec_math.h), and its backward one more exp for the density.
// Paths: the AVX-512 loop and a scalar baseline loop over common/activation_math.h;
// cpu/capability.h picks one at run time.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string_view>

#include "common/activation_math.h"
#include "common/dispatch.h"
#include "common/gelu_host.h"
#include "cpu/capability.h"
#include "cpu/row_chunks.h"
#include "cpu/simd.h"
#include "cpu/vec_math.h"

namespace minilvlm {
namespace {

template <typename T>
struct GeluData {
  const T* x;
  const T* grad;  // backward only
  T* out;         // forward: y; backward: grad_x
};

template <GeluKind K, typename T>
void gelu_forward_default(const GeluData<T>& a, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) a.out[i] = static_cast<T>(gelu_value<K>(static_cast<float>(a.x[i])));
}
template <GeluKind K, typename T>
void gelu_backward_default(const GeluData<T>& a, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i)
    a.out[i] = static_cast<T>(static_cast<float>(a.grad[i]) * gelu_slope<K>(static_cast<float>(a.x[i])));
}

#ifdef MINILVLM_HAVE_AVX512_PATH
MINILVLM_AVX512_BEGIN
// a(x) and a'(x) of the sigmoid forms (common/activation_math.h).
template <GeluKind K>
inline __m512 gelu_arg_v(__m512 x) {
  if constexpr (K == GeluKind::kTanh) {
    const __m512 inner = _mm512_fmadd_ps(_mm512_mul_ps(x, x), _mm512_set1_ps(kTanhGeluCubic), _mm512_set1_ps(1.0f));
    return _mm512_mul_ps(_mm512_mul_ps(x, inner), _mm512_set1_ps(kTanhGeluScale));
  }
  return _mm512_mul_ps(x, _mm512_set1_ps(kQuickGeluScale));
}
template <GeluKind K>
inline __m512 gelu_arg_slope_v(__m512 x) {
  if constexpr (K == GeluKind::kTanh)
    return _mm512_mul_ps(_mm512_fmadd_ps(_mm512_mul_ps(x, x), _mm512_set1_ps(3.0f * kTanhGeluCubic),
                                         _mm512_set1_ps(1.0f)),
                         _mm512_set1_ps(kTanhGeluScale));
  return _mm512_set1_ps(kQuickGeluScale);
}

template <GeluKind K>
inline __m512 gelu_value_v(__m512 x) {
  if constexpr (K == GeluKind::kErf) return _mm512_mul_ps(x, vec::normal_cdf(x));
  return _mm512_mul_ps(x, vec::sigmoid(gelu_arg_v<K>(x)));
}
template <GeluKind K>
inline __m512 gelu_slope_v(__m512 x) {
  if constexpr (K == GeluKind::kErf) {
    const __m512 density = _mm512_mul_ps(vec::exp(_mm512_mul_ps(_mm512_mul_ps(x, x), _mm512_set1_ps(-0.5f))),
                                         _mm512_set1_ps(kInvSqrt2Pi));
    return _mm512_fmadd_ps(x, density, vec::normal_cdf(x));
  }
  const __m512 s = vec::sigmoid(gelu_arg_v<K>(x));
  const __m512 ds = _mm512_mul_ps(s, _mm512_sub_ps(_mm512_set1_ps(1.0f), s));  // s (1 - s)
  return _mm512_fmadd_ps(_mm512_mul_ps(x, ds), gelu_arg_slope_v<K>(x), s);
}

template <GeluKind K, typename T>
void gelu_forward_avx512(const GeluData<T>& a, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; i += 16) {
    const __mmask16 k = lanes(end - i);
    store16(a.out + i, gelu_value_v<K>(load16(a.x + i, k)), k);
  }
}
template <GeluKind K, typename T>
void gelu_backward_avx512(const GeluData<T>& a, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; i += 16) {
    const __mmask16 k = lanes(end - i);
    store16(a.out + i, _mm512_mul_ps(load16(a.grad + i, k), gelu_slope_v<K>(load16(a.x + i, k))), k);
  }
}
MINILVLM_AVX512_END
#define MINILVLM_GELU_PICK(name, K, T) (avx512_enabled() ? &name##_avx512<K, T> : &name##_default<K, T>)
#else
#define MINILVLM_GELU_PICK(name, K, T) (&name##_default<K, T>)
#endif

at::Tensor gelu_cpu(const at::Tensor& x_in, c10::string_view approximate) {
  const GeluKind kind = check_gelu(x_in, std::string_view(approximate.data(), approximate.size()));
  TORCH_CHECK(x_in.device().is_cpu(), "gelu (CPU kernel): tensors must be on the CPU, got ", x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  dispatch_dtype<float, c10::BFloat16, c10::Half>(x.scalar_type(), "gelu", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const GeluData<T> a{x.data_ptr<T>(), nullptr, y.data_ptr<T>()};
    dispatch_gelu_kind(kind, [&](auto kind_tag) {
      auto* fn = MINILVLM_GELU_PICK(gelu_forward, decltype(kind_tag)::value, T);
      for_elements(x.numel(), [&](int64_t b, int64_t e) { fn(a, b, e); });
    });
  });
  return y;
}

at::Tensor gelu_backward_cpu(const at::Tensor& grad_in, const at::Tensor& x_in, c10::string_view approximate) {
  const GeluKind kind =
      check_gelu_backward(grad_in, x_in, std::string_view(approximate.data(), approximate.size()));
  TORCH_CHECK(x_in.device().is_cpu(), "gelu_backward (CPU kernel): tensors must be on the CPU, got ", x_in.device());
  const at::Tensor x = x_in.contiguous(), grad = grad_in.contiguous();
  at::Tensor grad_x = at::empty(x.sizes(), x.options());
  dispatch_dtype<float, c10::BFloat16, c10::Half>(x.scalar_type(), "gelu_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const GeluData<T> a{x.data_ptr<T>(), grad.data_ptr<T>(), grad_x.data_ptr<T>()};
    dispatch_gelu_kind(kind, [&](auto kind_tag) {
      auto* fn = MINILVLM_GELU_PICK(gelu_backward, decltype(kind_tag)::value, T);
      for_elements(x.numel(), [&](int64_t b, int64_t e) { fn(a, b, e); });
    });
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(minilvlm, CPU, m) {
  m.impl("gelu", &gelu_cpu);
  m.impl("gelu_backward", &gelu_backward_cpu);
}

}  // namespace minilvlm
