// rope.cpp: the CPU kernel of minilvlm::rope_ and rope_backward (the geometry and the order of
// work are common/rope_host.h's).
//
// One pass: at::parallel_for over the B*T positions; for each, the cos/sin row (rotary_dim / 2
// floats, shared by every head) is read once and every head row of q, then of k, is rotated in
// fp32 and written back in its own dtype. Only the rotary channels are touched in place; the
// backward, which writes a new tensor, also copies the pass-through ones. The AVX-512 path takes
// 16 channel pairs per step with masked tails (odd half widths, Phi's 16); the baseline path is
// the same loop in scalar code. The path is chosen at run time (cpu/capability.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common/dispatch.h"
#include "common/rope_host.h"
#include "cpu/capability.h"
#include "cpu/simd.h"

namespace minilvlm {
namespace {

// Positions per parallel task: at least this many rotated elements, so that small calls (a decode
// step) stay on one thread, where waking a second costs more than it saves.
constexpr int64_t kMinTaskElements = 1 << 16;

// One head row: the rotary pairs of src into dst (the same row in place), then the pass-through
// channels when copy_rest. s is the sine, already negated for the rotation by -angle.
template <typename T>
void rotate_row_default(const T* src, T* dst, const float* c, const float* s, float sign, const RopeGeometry& g,
                        bool copy_rest) {
  const int64_t half = g.half;
  for (int64_t i = 0; i < half; ++i) {
    float o1, o2;
    rope_rotate_pair(static_cast<float>(src[i]), static_cast<float>(src[half + i]), c[i], sign * s[i], o1, o2);
    dst[i] = static_cast<T>(o1);
    dst[half + i] = static_cast<T>(o2);
  }
  if (copy_rest) std::memcpy(dst + 2 * half, src + 2 * half, g.rest() * sizeof(T));
}

#ifdef MINILVLM_HAVE_AVX512_PATH
MINILVLM_AVX512_BEGIN
template <typename T>
void rotate_row_avx512(const T* src, T* dst, const float* c, const float* s, float sign, const RopeGeometry& g,
                       bool copy_rest) {
  const int64_t half = g.half;
  const __m512 signs = _mm512_set1_ps(sign);
  for (int64_t i = 0; i < half; i += 16) {
    const __mmask16 m = lanes(half - i);
    const __m512 x1 = load16(src + i, m), x2 = load16(src + half + i, m);
    const __m512 cv = load16(c + i, m), sv = _mm512_mul_ps(load16(s + i, m), signs);
    // (x1 c - x2 s, x2 c + x1 s), products rounded before the sum as in the reference
    store16(dst + i, _mm512_sub_ps(_mm512_mul_ps(x1, cv), _mm512_mul_ps(x2, sv)), m);
    store16(dst + half + i, _mm512_add_ps(_mm512_mul_ps(x2, cv), _mm512_mul_ps(x1, sv)), m);
  }
  if (copy_rest) std::memcpy(dst + 2 * half, src + 2 * half, g.rest() * sizeof(T));
}
MINILVLM_AVX512_END
#endif

template <typename T>
using RowFn = void (*)(const T*, T*, const float*, const float*, float, const RopeGeometry&, bool);

template <typename T>
RowFn<T> pick_row_fn() {
#ifdef MINILVLM_HAVE_AVX512_PATH
  if (avx512_enabled()) return &rotate_row_avx512<T>;
#endif
  return &rotate_row_default<T>;
}

template <typename T>
void rotate_typed(const RopeGeometry& g, const T* q_src, T* q_dst, const T* k_src, T* k_dst, const float* cos,
                  const float* sin, bool inverse, bool copy_rest) {
  const RowFn<T> row = pick_row_fn<T>();
  const float sign = inverse ? -1.0f : 1.0f;
  const int64_t per_position = (g.q.heads + g.k.heads) * (copy_rest ? g.head_dim : 2 * g.half);
  const int64_t grain = std::max<int64_t>(1, kMinTaskElements / std::max<int64_t>(per_position, 1));
  at::parallel_for(0, g.batch * g.tokens, grain, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t b = p / g.tokens, t = p % g.tokens;
      const float* c = cos + g.table_offset(b, t);
      const float* s = sin + g.table_offset(b, t);
      for (int64_t h = 0; h < g.q.heads; ++h) {
        const int64_t off = g.q.offset(b, h, t);
        row(q_src + off, q_dst + off, c, s, sign, g, copy_rest);
      }
      for (int64_t h = 0; h < g.k.heads; ++h) {
        const int64_t off = g.k.offset(b, h, t);
        row(k_src + off, k_dst + off, c, s, sign, g, copy_rest);
      }
    }
  });
}

void rotate(const RopeGeometry& g, const at::Tensor& q_src, const at::Tensor& q_dst, const at::Tensor& k_src,
            const at::Tensor& k_dst, const at::Tensor& cos, const at::Tensor& sin, bool inverse, bool copy_rest) {
  dispatch_dtype<float, c10::BFloat16, c10::Half>(q_src.scalar_type(), "rope_", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool has_k = k_src.defined();
    rotate_typed<T>(g, q_src.const_data_ptr<T>(), q_dst.data_ptr<T>(), has_k ? k_src.const_data_ptr<T>() : nullptr,
                    has_k ? k_dst.data_ptr<T>() : nullptr, cos.const_data_ptr<float>(), sin.const_data_ptr<float>(),
                    inverse, copy_rest);
  });
}

void rope_cpu(const at::Tensor& q, const std::optional<at::Tensor>& k, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(q.device().is_cpu(), "rope_ (CPU kernel): tensors must be on the CPU, got ", q.device());
  run_rope_(q, k, cos, sin, rotate);
}

at::Tensor rope_backward_cpu(const at::Tensor& grad, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(grad.device().is_cpu(), "rope_backward (CPU kernel): tensors must be on the CPU, got ", grad.device());
  return run_rope_backward(grad, cos, sin, rotate);
}

}  // namespace

TORCH_LIBRARY_IMPL(minilvlm, CPU, m) {
  m.impl("rope_", &rope_cpu);
  m.impl("rope_backward", &rope_backward_cpu);
}

}  // namespace minilvlm
