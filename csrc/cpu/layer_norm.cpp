// layer_norm.cpp: the CPU kernel of minilvlm::layer_norm and layer_norm_backward (the ViT's and
// Phi's LayerNorm; the math is in common/layer_norm_host.h).
//
// One row at a time: the forward reads x three times (mean, variance about the mean, y; the second
// and third from L1/L2) and writes y; the backward recomputes mean and rstd the same way, sums gw
// and gw * xhat, then writes grad_x and adds grad_y * xhat and grad_y into its chunk's gradient
// rows (cpu/row_chunks.h). Memory traffic per element: forward 2 (x in, y out), backward 3
// (grad_y, x in, grad_x out); weight and bias are cached rows.
//
// The row algorithms are written once over a lane set (cpu/vec_math.h) and compiled for the
// baseline ISA and for AVX-512; cpu/capability.h picks one at run time.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>

#include "common/dispatch.h"
#include "common/layer_norm_host.h"
#include "cpu/capability.h"
#include "cpu/row_chunks.h"
#include "cpu/simd.h"
#include "cpu/vec_math.h"

MINILVLM_LANE_TEMPLATES_FILE

namespace minilvlm {
namespace {

template <typename T>
struct LnRows {
  const T* x;
  const T* weight;
  const T* bias;  // null: none
  T* y;           // forward: y; backward: grad_x
  const T* grad_y;  // backward only
  int64_t dim;
  float eps;
  bool weight_grad, bias_grad;  // backward: which gradient rows the chunk accumulator holds
};

struct RowStats {
  float mean, rstd;
};

// Mean, then the variance about it (two passes: no cancellation for rows far from zero mean).
template <typename L, typename T>
__attribute__((always_inline)) inline RowStats ln_stats(const T* x, int64_t D, float eps) {
  typename L::V total = L::splat(0.0f);
  for (int64_t i = 0; i < D; i += L::kWidth) total = L::add(total, L::load(x + i, D - i));
  const float mean = L::sum(total) / static_cast<float>(D);
  const auto mean_v = L::splat(mean);
  typename L::V squares = L::splat(0.0f);
  for (int64_t i = 0; i < D; i += L::kWidth) {
    const auto d = L::zero_tail(L::sub(L::load(x + i, D - i), mean_v), D - i);
    squares = L::fmadd(d, d, squares);
  }
  return {mean, 1.0f / std::sqrt(L::sum(squares) / static_cast<float>(D) + eps)};
}

struct LnForward {
  template <typename L, typename T>
  __attribute__((always_inline)) static void on_row(const LnRows<T>& a, int64_t row, float*) {
    const int64_t D = a.dim;
    const T* x = a.x + row * D;
    T* y = a.y + row * D;
    const RowStats st = ln_stats<L>(x, D, a.eps);
    const auto mean = L::splat(st.mean), rstd = L::splat(st.rstd);
    for (int64_t i = 0; i < D; i += L::kWidth) {
      const auto xhat = L::mul(L::sub(L::load(x + i, D - i), mean), rstd);
      const auto shift = a.bias ? L::load(a.bias + i, D - i) : L::splat(0.0f);
      L::store(y + i, L::fmadd(xhat, L::load(a.weight + i, D - i), shift), D - i);
    }
  }
};

struct LnBackward {
  template <typename L, typename T>
  __attribute__((always_inline)) static void on_row(const LnRows<T>& a, int64_t row, float* acc) {
    const int64_t D = a.dim;
    const T* x = a.x + row * D;
    const T* dy = a.grad_y + row * D;
    const RowStats st = ln_stats<L>(x, D, a.eps);
    const auto mean = L::splat(st.mean), rstd = L::splat(st.rstd);
    typename L::V sum_gw = L::splat(0.0f), sum_gw_xhat = L::splat(0.0f);
    for (int64_t i = 0; i < D; i += L::kWidth) {
      const auto gw = L::mul(L::load(dy + i, D - i), L::load(a.weight + i, D - i));
      sum_gw = L::add(sum_gw, gw);
      sum_gw_xhat = L::fmadd(gw, L::mul(L::sub(L::load(x + i, D - i), mean), rstd), sum_gw_xhat);
    }
    const auto mean_gw = L::splat(L::sum(sum_gw) / static_cast<float>(D));
    const auto mean_gw_xhat = L::splat(L::sum(sum_gw_xhat) / static_cast<float>(D));
    float* acc_w = a.weight_grad ? acc : nullptr;
    float* acc_b = a.bias_grad ? acc + (a.weight_grad ? D : 0) : nullptr;
    T* dx = a.y + row * D;
    for (int64_t i = 0; i < D; i += L::kWidth) {
      const auto g = L::load(dy + i, D - i);
      const auto xhat = L::mul(L::sub(L::load(x + i, D - i), mean), rstd);
      const auto gw = L::mul(g, L::load(a.weight + i, D - i));
      L::store(dx + i, L::mul(L::sub(L::sub(gw, mean_gw), L::mul(xhat, mean_gw_xhat)), rstd), D - i);
      if (acc_w) L::store(acc_w + i, L::fmadd(g, xhat, L::load(acc_w + i, D - i)), D - i);
      if (acc_b) L::store(acc_b + i, L::add(g, L::load(acc_b + i, D - i)), D - i);
    }
  }
};

at::Tensor layer_norm_cpu(const at::Tensor& x_in, const at::Tensor& weight_in, const std::optional<at::Tensor>& bias_in,
                          double eps) {
  const RowsShape shape = plan_layer_norm(x_in, weight_in, bias_in, eps);
  TORCH_CHECK(x_in.device().is_cpu(), "layer_norm (CPU kernel): tensors must be on the CPU, got ", x_in.device());
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  at::Tensor y = at::empty(x.sizes(), x.options());
  dispatch_dtype<float, c10::BFloat16, c10::Half>(x.scalar_type(), "layer_norm", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const LnRows<T> a{x.data_ptr<T>(), weight.data_ptr<T>(), bias.defined() ? bias.data_ptr<T>() : nullptr,
                      y.data_ptr<T>(), nullptr, shape.dim, static_cast<float>(eps), false, false};
    auto* rows_fn = pick_rows<LnForward, LnRows<T>>();
    for_row_chunks(shape.rows, shape.dim, 0, [&](int64_t r0, int64_t r1, float*) { rows_fn(a, r0, r1, nullptr); });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x_in,
                                                                       const at::Tensor& weight_in, double eps,
                                                                       bool weight_grad, bool bias_grad) {
  const RowsShape shape = plan_layer_norm_backward(grad_y, x_in, weight_in, eps);
  TORCH_CHECK(x_in.device().is_cpu(), "layer_norm_backward (CPU kernel): tensors must be on the CPU, got ",
              x_in.device());
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous(), dy = grad_y.contiguous();
  at::Tensor grad_x = at::empty(x.sizes(), x.options());
  const int64_t D = shape.dim, width = (weight_grad ? D : 0) + (bias_grad ? D : 0);
  at::Tensor sums;
  dispatch_dtype<float, c10::BFloat16, c10::Half>(x.scalar_type(), "layer_norm_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const LnRows<T> a{x.data_ptr<T>(), weight.data_ptr<T>(), nullptr, grad_x.data_ptr<T>(), dy.data_ptr<T>(),
                      D, static_cast<float>(eps), weight_grad, bias_grad};
    auto* rows_fn = pick_rows<LnBackward, LnRows<T>>();
    sums = for_row_chunks(shape.rows, D, width, [&](int64_t r0, int64_t r1, float* acc) { rows_fn(a, r0, r1, acc); });
  });
  const auto dtype = weight.scalar_type();
  const at::Tensor empty = at::empty({0}, weight.options());
  // Copies (never views of `sums`), so that the two outputs do not share memory.
  at::Tensor grad_weight = weight_grad ? sums.narrow(0, 0, D).to(dtype, false, true) : empty;
  at::Tensor grad_bias = bias_grad ? sums.narrow(0, weight_grad ? D : 0, D).to(dtype, false, true) : empty.clone();
  return {grad_x, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(minilvlm, CPU, m) {
  m.impl("layer_norm", &layer_norm_cpu);
  m.impl("layer_norm_backward", &layer_norm_backward_cpu);
}

}  // namespace minilvlm
