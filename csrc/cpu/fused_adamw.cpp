// fused_adamw.cpp: the CPU kernels of minilvlm::fused_adamw_, one AdamW step over flat buffers,
// and of minilvlm::fused_adamw_multi_, the same step over lists of tensors.
//
// SIMD choice: runtime dispatch. The AVX-512 intrinsics path and an AVX2+FMA build of the
// portable loop are compiled for their ISA (cpu/simd.h) and chosen at run time, so one binary
// runs on any x86-64 CPU (and the portable loop alone on other architectures); the choice is
// cpu/capability.h's, which MINILVLM_CPU_CAPABILITY caps, so tests check every path on an
// AVX-512 machine.
//
// Memory traffic per element, fp32: read param, grad, m, v and write param, m, v = 28 bytes;
// bf16 params with fp32 masters: read grad (2), master, m, v and write master, m, v, param (2)
// = 28 bytes. The step is bandwidth bound, so the loop is a single streaming pass.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "common/dispatch.h"
#include "common/fused_adamw_host.h"
#include "cpu/capability.h"
#include "cpu/simd.h"

namespace minilvlm {
namespace {

inline float to_float(float x) { return x; }
inline float to_float(c10::BFloat16 x) { return static_cast<float>(x); }
inline float to_float(c10::Half x) { return static_cast<float>(x); }
template <typename T>
inline T from_float(float x) { return static_cast<T>(x); }

// ---------------------------------------------------------------------------------------
// portable loop (also the scalar tail of the AVX-512 path)

// Inlined into each caller, so the fmaf calls of adamw_update become fma instructions where
// the caller's target has them.
template <typename PT>
__attribute__((always_inline)) inline void adamw_loop(PT* param, const PT* grad, float* m, float* v, float* master,
                                                      int64_t begin, int64_t end, const AdamwSegment& s,
                                                      const AdamwConstants& c, float grad_scale) {
  for (int64_t i = begin; i < end; ++i) {
    float w = master ? master[i] : to_float(param[i]);
    adamw_update(w, to_float(grad[i]) * grad_scale, m[i], v[i], s, c);
    if (master) master[i] = w;
    param[i] = from_float<PT>(w);
  }
}

template <typename PT>
void adamw_range_portable(PT* param, const PT* grad, float* m, float* v, float* master, int64_t begin,
                          int64_t end, const AdamwSegment& s, const AdamwConstants& c, float grad_scale) {
  adamw_loop(param, grad, m, v, master, begin, end, s, c, grad_scale);
}

#ifdef MINILVLM_HAVE_AVX512_PATH
template <typename PT>
MINILVLM_AVX2 void adamw_range_avx2(PT* param, const PT* grad, float* m, float* v, float* master, int64_t begin,
                                    int64_t end, const AdamwSegment& s, const AdamwConstants& c, float grad_scale) {
  adamw_loop(param, grad, m, v, master, begin, end, s, c, grad_scale);
}
#endif

// ---------------------------------------------------------------------------------------
// AVX-512 path

#ifdef MINILVLM_HAVE_AVX512_PATH
MINILVLM_AVX512_BEGIN

// The vector form of adamw_update (common/fused_adamw_math.h), op for op.
template <typename PT, bool kMaster, bool kSmallWeight>
void adamw_range_avx512(PT* param, const PT* grad, float* m, float* v, float* master, int64_t begin, int64_t end,
                        const AdamwSegment& s, const AdamwConstants& c, float grad_scale) {
  const __m512 decay = _mm512_set1_ps(s.decay), neg_step_size = _mm512_set1_ps(s.neg_step_size);
  const __m512 bc2_sqrt = _mm512_set1_ps(s.bc2_sqrt), eps = _mm512_set1_ps(c.eps);
  const __m512 lerp_weight = _mm512_set1_ps(kSmallWeight ? c.beta1_weight : c.beta1_weight - 1.0f);
  const __m512 beta2 = _mm512_set1_ps(c.beta2), one_minus_beta2 = _mm512_set1_ps(c.one_minus_beta2);
  const __m512 scale = _mm512_set1_ps(grad_scale);
  for (int64_t i = begin; i < end; i += 16) {
    const __mmask16 k = lanes(end - i);
    __m512 g = load16(grad + i, k);
    if (grad_scale != 1.0f) g = _mm512_mul_ps(g, scale);
    __m512 w = kMaster ? load16(master + i, k) : load16(param + i, k);
    __m512 mv = load16(m + i, k);
    __m512 vv = load16(v + i, k);
    w = _mm512_mul_ps(w, decay);
    mv = _mm512_fmadd_ps(lerp_weight, _mm512_sub_ps(g, mv), kSmallWeight ? mv : g);
    vv = _mm512_mul_ps(vv, beta2);
    vv = _mm512_fmadd_ps(_mm512_mul_ps(one_minus_beta2, g), g, vv);
    const __m512 denom = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vv), bc2_sqrt), eps);
    w = _mm512_add_ps(w, _mm512_div_ps(_mm512_mul_ps(neg_step_size, mv), denom));
    store16(m + i, mv, k);
    store16(v + i, vv, k);
    if (kMaster) store16(master + i, w, k);
    store16(param + i, w, k);
  }
}

MINILVLM_AVX512_END
#endif

template <typename PT>
void adamw_range(PT* param, const PT* grad, float* m, float* v, float* master, int64_t begin, int64_t end,
                 const AdamwSegment& s, const AdamwConstants& c, float grad_scale) {
#ifdef MINILVLM_HAVE_AVX512_PATH
  switch (capability()) {
    case Capability::kAvx512Bf16:  // nothing of AdamW gains from bf16 dot products
    case Capability::kAvx512: {
      const bool small = c.beta1_weight < 0.5f;
      auto* run = master ? (small ? adamw_range_avx512<PT, true, true> : adamw_range_avx512<PT, true, false>)
                         : (small ? adamw_range_avx512<PT, false, true> : adamw_range_avx512<PT, false, false>);
      return run(param, grad, m, v, master, begin, end, s, c, grad_scale);
    }
    case Capability::kAvx2: return adamw_range_avx2(param, grad, m, v, master, begin, end, s, c, grad_scale);
    case Capability::kDefault: break;
  }
#endif
  adamw_range_portable(param, grad, m, v, master, begin, end, s, c, grad_scale);
}

// The unit of work of both CPU ops: 32768 elements (about 900 KB of traffic in fp32).
constexpr int64_t kBlock = 1 << 15;

template <typename PT>
void fused_adamw_typed(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                       const at::Tensor& exp_avg_sq, const std::optional<at::Tensor>& master, const AdamwPlan& plan,
                       float grad_scale) {
  if (plan.segments.empty()) return;
  PT* p = param.data_ptr<PT>();
  const PT* g = grad.data_ptr<PT>();
  float* m = exp_avg.data_ptr<float>();
  float* v = exp_avg_sq.data_ptr<float>();
  float* w = master.has_value() ? master->data_ptr<float>() : nullptr;
  const auto& segs = plan.segments;
  // Work is split in fixed, cache-line aligned blocks of the flat index space; each thread
  // takes a contiguous run of blocks and walks the segments that overlap it.
  const int64_t lo = segs.front().begin, hi = segs.back().end;
  at::parallel_for(lo / kBlock, (hi + kBlock - 1) / kBlock, 1, [&](int64_t b0, int64_t b1) {
    const int64_t start = std::max(b0 * kBlock, lo), stop = std::min(b1 * kBlock, hi);
    for (const auto& s : segs) {
      const int64_t a = std::max(s.begin, start), b = std::min(s.end, stop);
      if (a < b) adamw_range<PT>(p, g, m, v, w, a, b, s, plan.constants, grad_scale);
    }
  });
}

void fused_adamw_cpu(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                     const at::Tensor& exp_avg_sq, const std::optional<at::Tensor>& master,
                     at::IntArrayRef seg_bounds, at::ArrayRef<double> seg_lr, at::ArrayRef<double> seg_wd,
                     at::IntArrayRef seg_step, double beta1, double beta2, double eps,
                     const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  const AdamwPlan plan = plan_fused_adamw(param, grad, exp_avg, exp_avg_sq, master, seg_bounds, seg_lr, seg_wd,
                                          seg_step, beta1, beta2, eps);
  TORCH_CHECK(param.device().is_cpu(), "fused_adamw_ (CPU kernel): tensors must be on the CPU, got ", param.device());
  check_grad_scale(grad_scale);
  check_found_inf(found_inf, param);
  // On the CPU the flag is plain memory: reading it costs nothing, and a skipped step touches nothing.
  if (found_inf.has_value() && found_inf->item<float>() != 0.0f) return;
  const float scale = grad_scale.has_value() ? grad_scale->item<float>() : 1.0f;
  dispatch_dtype<float, c10::BFloat16, c10::Half>(param.scalar_type(), "fused_adamw_", [&](auto tag) {
    using T = typename decltype(tag)::type;
    fused_adamw_typed<T>(param, grad, exp_avg, exp_avg_sq, master, plan, scale);
  });
}

// fused_adamw_multi_: one parallel pass over the concatenation of every tensor. That index space
// is cut into kBlock blocks; each thread takes a contiguous run of blocks and walks the tensors
// that overlap it, so thousands of small tensors cost one fork-join, not one per tensor.
template <typename PT>
void fused_adamw_multi_typed(const AdamwMultiPlan& plan, float grad_scale) {
  const auto& tensors = plan.tensors;
  std::vector<int64_t> offsets(tensors.size() + 1, 0);  // where tensor i starts in the concatenation
  for (size_t i = 0; i < tensors.size(); ++i) offsets[i + 1] = offsets[i] + tensors[i].seg.end;
  const int64_t total = offsets.back();
  at::parallel_for(0, (total + kBlock - 1) / kBlock, 1, [&](int64_t b0, int64_t b1) {
    const int64_t start = b0 * kBlock, stop = std::min(b1 * kBlock, total);
    size_t i = std::upper_bound(offsets.begin(), offsets.end(), start) - offsets.begin() - 1;
    for (; i < tensors.size() && offsets[i] < stop; ++i) {
      const AdamwTensor& t = tensors[i];
      const int64_t a = std::max<int64_t>(start - offsets[i], 0), b = std::min(stop - offsets[i], t.seg.end);
      adamw_range<PT>(static_cast<PT*>(t.param), static_cast<const PT*>(t.grad), t.exp_avg, t.exp_avg_sq, t.master,
                      a, b, t.seg, plan.constants, grad_scale);
    }
  });
}

void fused_adamw_multi_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                           at::TensorList exp_avg_sqs, at::TensorList masters, at::ArrayRef<double> lrs,
                           at::ArrayRef<double> weight_decays, at::IntArrayRef steps, double beta1, double beta2,
                           double eps, const std::optional<at::Tensor>& grad_scale,
                           const std::optional<at::Tensor>& found_inf) {
  const AdamwMultiPlan plan = plan_fused_adamw_multi(params, grads, exp_avgs, exp_avg_sqs, masters, lrs,
                                                     weight_decays, steps, beta1, beta2, eps);
  check_grad_scale(grad_scale, "fused_adamw_multi_");
  if (params.empty()) return;
  TORCH_CHECK(params[0].device().is_cpu(), "fused_adamw_multi_ (CPU kernel): tensors must be on the CPU, got ",
              params[0].device());
  check_found_inf(found_inf, params[0], "fused_adamw_multi_", "params[0]");
  if (plan.tensors.empty() || (found_inf.has_value() && found_inf->item<float>() != 0.0f)) return;
  const float scale = grad_scale.has_value() ? grad_scale->item<float>() : 1.0f;
  dispatch_dtype<float, c10::BFloat16, c10::Half>(params[0].scalar_type(), "fused_adamw_multi_", [&](auto tag) {
    fused_adamw_multi_typed<typename decltype(tag)::type>(plan, scale);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(minilvlm, CPU, m) {
  m.impl("fused_adamw_", &fused_adamw_cpu);
  m.impl("fused_adamw_multi_", &fused_adamw_multi_cpu);
}

}  // namespace minilvlm
