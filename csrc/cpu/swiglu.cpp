// swiglu.cpp: the CPU kernel of minilvlm::swiglu and swiglu_backward, silu(gate) * up of the
// LLaMA/Qwen2 MLP (the math is in common/activation_math.h).
//
// One streaming pass each way, and nothing saved but gate and up: the backward recomputes
// sigmoid(gate), which costs less than storing and re-reading silu(gate). Memory traffic per
// element: forward 3 (gate, up in, y out), backward 5 (grad, gate, up in, grad_gate, grad_up out);
// the composition silu(gate) * up with autograd moves 5 forward and 9 backward.
// Paths: the AVX-512 loop (exp by cpu/vec_math.h) and a scalar baseline loop over
// common/activation_math.h; cpu/capability.h picks one at run time.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "common/activation_math.h"
#include "common/dispatch.h"
#include "common/swiglu_host.h"
#include "cpu/capability.h"
#include "cpu/row_chunks.h"
#include "cpu/simd.h"
#include "cpu/vec_math.h"

namespace minilvlm {
namespace {

template <typename T>
struct SwigluData {
  const T* gate;
  const T* up;
  const T* grad;  // backward only
  T* out;         // forward: y; backward: grad_gate
  T* out_up;      // backward: grad_up
};

template <typename T>
void swiglu_forward_default(const SwigluData<T>& a, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i)
    a.out[i] = static_cast<T>(swiglu_value(static_cast<float>(a.gate[i]), static_cast<float>(a.up[i])));
}
template <typename T>
void swiglu_backward_default(const SwigluData<T>& a, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const SwigluGrads g =
        swiglu_grads(static_cast<float>(a.grad[i]), static_cast<float>(a.gate[i]), static_cast<float>(a.up[i]));
    a.out[i] = static_cast<T>(g.gate);
    a.out_up[i] = static_cast<T>(g.up);
  }
}

#ifdef MINILVLM_HAVE_AVX512_PATH
MINILVLM_AVX512_BEGIN
template <typename T>
void swiglu_forward_avx512(const SwigluData<T>& a, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; i += 16) {
    const __mmask16 k = lanes(end - i);
    const __m512 g = load16(a.gate + i, k);
    store16(a.out + i, _mm512_mul_ps(_mm512_mul_ps(g, vec::sigmoid(g)), load16(a.up + i, k)), k);
  }
}
template <typename T>
void swiglu_backward_avx512(const SwigluData<T>& a, int64_t begin, int64_t end) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = begin; i < end; i += 16) {
    const __mmask16 k = lanes(end - i);
    const __m512 g = load16(a.gate + i, k), u = load16(a.up + i, k), dy = load16(a.grad + i, k);
    const __m512 s = vec::sigmoid(g);
    const __m512 slope = _mm512_mul_ps(s, _mm512_fmadd_ps(g, _mm512_sub_ps(one, s), one));  // s (1 + g (1 - s))
    store16(a.out + i, _mm512_mul_ps(_mm512_mul_ps(dy, u), slope), k);
    store16(a.out_up + i, _mm512_mul_ps(dy, _mm512_mul_ps(g, s)), k);
  }
}
MINILVLM_AVX512_END
#define MINILVLM_SWIGLU_PICK(name, T) (avx512_enabled() ? &name##_avx512<T> : &name##_default<T>)
#else
#define MINILVLM_SWIGLU_PICK(name, T) (&name##_default<T>)
#endif

at::Tensor swiglu_cpu(const at::Tensor& gate_in, const at::Tensor& up_in) {
  check_swiglu(gate_in, up_in);
  TORCH_CHECK(gate_in.device().is_cpu(), "swiglu (CPU kernel): tensors must be on the CPU, got ", gate_in.device());
  const at::Tensor gate = gate_in.contiguous(), up = up_in.contiguous();
  at::Tensor y = at::empty(gate.sizes(), gate.options());
  dispatch_dtype<float, c10::BFloat16, c10::Half>(gate.scalar_type(), "swiglu", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const SwigluData<T> a{gate.data_ptr<T>(), up.data_ptr<T>(), nullptr, y.data_ptr<T>(), nullptr};
    auto* fn = MINILVLM_SWIGLU_PICK(swiglu_forward, T);
    for_elements(gate.numel(), [&](int64_t b, int64_t e) { fn(a, b, e); });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> swiglu_backward_cpu(const at::Tensor& grad_in, const at::Tensor& gate_in,
                                                       const at::Tensor& up_in) {
  check_swiglu_backward(grad_in, gate_in, up_in);
  TORCH_CHECK(gate_in.device().is_cpu(), "swiglu_backward (CPU kernel): tensors must be on the CPU, got ",
              gate_in.device());
  const at::Tensor gate = gate_in.contiguous(), up = up_in.contiguous(), grad = grad_in.contiguous();
  at::Tensor grad_gate = at::empty(gate.sizes(), gate.options()), grad_up = at::empty(gate.sizes(), gate.options());
  dispatch_dtype<float, c10::BFloat16, c10::Half>(gate.scalar_type(), "swiglu_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const SwigluData<T> a{gate.data_ptr<T>(), up.data_ptr<T>(), grad.data_ptr<T>(), grad_gate.data_ptr<T>(),
                          grad_up.data_ptr<T>()};
    auto* fn = MINILVLM_SWIGLU_PICK(swiglu_backward, T);
    for_elements(gate.numel(), [&](int64_t b, int64_t e) { fn(a, b, e); });
  });
  return {grad_gate, grad_up};
}

}  // namespace

TORCH_LIBRARY_IMPL(minilvlm, CPU, m) {
  m.impl("swiglu", &swiglu_cpu);
  m.impl("swiglu_backward", &swiglu_backward_cpu);
}

}  // namespace minilvlm
