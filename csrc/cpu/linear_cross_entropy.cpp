// linear_cross_entropy.cpp: the CPU kernel of minilvlm::linear_cross_entropy: the fused softmax
// pass over each chunk of logits (the GEMMs and the order of work are
// common/linear_cross_entropy_host.h's).
//
// at::parallel_for over the rows of the chunk. Each row (V elements, up to 600 KB in fp32 at
// V = 152K, so it stays in L2) is read three times and written once: its max, the sum of
// exp(x - max) (lse = max + log(sum), loss = lse - x[target]), and then, when gradients are wanted,
// g = exp(x - lse) - [i == target] in fp32, stored over the logits in their dtype and added to
// this thread's fp32 row of grad_bias partials, which are summed in thread order at the end (so
// the result does not depend on scheduling). Only the first read comes from memory. The AVX-512
// path takes 16 logits per step with its own exp (below); the baseline path is scalar with
// std::exp. The path is chosen at run time (cpu/capability.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>

#include "common/dispatch.h"
#include "common/linear_cross_entropy_host.h"
#include "cpu/capability.h"
#include "cpu/simd.h"
#include "cpu/vec_math.h"

namespace minilvlm {
namespace {

// Rows per parallel task: at least this many logits, so that a small chunk stays on one thread.
constexpr int64_t kMinTaskElements = 1 << 16;

void check_target(int64_t t, int64_t vocab, int64_t row) {
  TORCH_CHECK(t >= 0 && t < vocab, "linear_cross_entropy: target ", t, " of row ", row,
              " lies outside the vocabulary of ", vocab);
}

// ---------------------------------------------------------------------------------------
// baseline path

template <typename T>
float row_lse_default(const T* x, int64_t vocab) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < vocab; ++i) m = std::max(m, static_cast<float>(x[i]));
  float s = 0.0f;
  for (int64_t i = 0; i < vocab; ++i) s += std::exp(static_cast<float>(x[i]) - m);
  return m + std::log(s);
}

template <typename T>
void row_grad_default(T* x, int64_t vocab, float lse, int64_t target, float* grad_bias) {
  for (int64_t i = 0; i < vocab; ++i) {
    const float g = std::exp(static_cast<float>(x[i]) - lse) - (i == target ? 1.0f : 0.0f);
    x[i] = static_cast<T>(g);
    if (grad_bias != nullptr) grad_bias[i] += g;
  }
}

// ---------------------------------------------------------------------------------------
// AVX-512 path

#ifdef MINILVLM_HAVE_AVX512_PATH
MINILVLM_AVX512_BEGIN

// e^x is vec::exp (cpu/vec_math.h): its arguments here, x - max and x - lse, are never positive.

// The lanes of v combined in lane order (GCC 12's _mm512_reduce_* trip -Wuninitialized in its
// own header).
template <typename Op>
inline float reduce16(__m512 v, Op op) {
  alignas(64) float lane[16];
  _mm512_store_ps(lane, v);
  float total = lane[0];
  for (int i = 1; i < 16; ++i) total = op(total, lane[i]);
  return total;
}

template <typename T>
float row_lse_avx512(const T* x, int64_t vocab) {
  __m512 mv = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < vocab; i += 16) {
    const __mmask16 m = lanes(vocab - i);
    mv = _mm512_mask_max_ps(mv, m, mv, load16(x + i, m));
  }
  const float mx = reduce16(mv, [](float a, float b) { return std::max(a, b); });
  const __m512 shift = _mm512_set1_ps(mx);
  __m512 sv = _mm512_setzero_ps();
  for (int64_t i = 0; i < vocab; i += 16) {
    const __mmask16 m = lanes(vocab - i);
    sv = _mm512_mask_add_ps(sv, m, sv, vec::exp(_mm512_sub_ps(load16(x + i, m), shift)));
  }
  return mx + std::log(reduce16(sv, [](float a, float b) { return a + b; }));
}

template <typename T>
void row_grad_avx512(T* x, int64_t vocab, float lse, int64_t target, float* grad_bias) {
  const __m512 shift = _mm512_set1_ps(lse);
  for (int64_t i = 0; i < vocab; i += 16) {
    const __mmask16 m = lanes(vocab - i);
    __m512 g = vec::exp(_mm512_sub_ps(load16(x + i, m), shift));
    if (static_cast<uint64_t>(target - i) < 16)  // the one-hot lane is in this step
      g = _mm512_mask_sub_ps(g, __mmask16(1u << (target - i)), g, _mm512_set1_ps(1.0f));
    store16(x + i, g, m);
    if (grad_bias != nullptr) store16(grad_bias + i, _mm512_add_ps(load16(grad_bias + i, m), g), m);
  }
}

MINILVLM_AVX512_END
#endif

// ---------------------------------------------------------------------------------------
// the pass

template <typename T>
void softmax_rows(T* logits, const int64_t* targets, float* row_loss, float* partials, int64_t rows, int64_t vocab,
                  bool write_grad) {
  auto* lse_fn = &row_lse_default<T>;
  auto* grad_fn = &row_grad_default<T>;
#ifdef MINILVLM_HAVE_AVX512_PATH
  if (avx512_enabled()) {
    lse_fn = &row_lse_avx512<T>;
    grad_fn = &row_grad_avx512<T>;
  }
#endif
  const int64_t grain = std::max<int64_t>(1, kMinTaskElements / vocab);
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    float* grad_bias = partials != nullptr ? partials + at::get_thread_num() * vocab : nullptr;
    for (int64_t r = r0; r < r1; ++r) {
      T* x = logits + r * vocab;
      const int64_t t = targets[r];
      check_target(t, vocab, r);
      const float lse = lse_fn(x, vocab);
      row_loss[r] = lse - static_cast<float>(x[t]);
      if (write_grad) grad_fn(x, vocab, lse, t, grad_bias);
    }
  });
}

void softmax_pass(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& row_loss,
                  const at::Tensor& grad_bias, bool write_grad) {
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  // One fp32 row of grad_bias partials per thread (at::get_thread_num() inside parallel_for).
  at::Tensor partials = grad_bias.defined() && write_grad
                            ? at::zeros({at::get_num_threads(), vocab}, row_loss.options())
                            : at::Tensor();
  dispatch_dtype<float, c10::BFloat16, c10::Half>(logits.scalar_type(), "linear_cross_entropy", [&](auto tag) {
    using T = typename decltype(tag)::type;
    softmax_rows<T>(logits.data_ptr<T>(), targets.const_data_ptr<int64_t>(), row_loss.data_ptr<float>(),
                    partials.defined() ? partials.data_ptr<float>() : nullptr, rows, vocab, write_grad);
  });
  if (partials.defined()) grad_bias.add_(partials.sum(0));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_cpu(
    const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& targets, at::ScalarType compute_dtype, int64_t chunk_rows, std::array<bool, 3> output_mask) {
  plan_linear_cross_entropy(hidden, weight, bias, targets, compute_dtype, chunk_rows);
  TORCH_CHECK(hidden.device().is_cpu(), "linear_cross_entropy (CPU kernel): tensors must be on the CPU, got ",
              hidden.device());
  return run_linear_cross_entropy(hidden, weight, bias, targets, compute_dtype, chunk_rows, output_mask,
                                  softmax_pass);
}

}  // namespace

TORCH_LIBRARY_IMPL(minilvlm, CPU, m) { m.impl("linear_cross_entropy", &linear_cross_entropy_cpu); }

}  // namespace minilvlm
