// rms_norm.cpp: the CPU kernel of minilvlm::rms_norm and rms_norm_backward, the RMSNorm of LLaMA
// and Qwen2 with the residual add before it fused in (the math is in common/rms_norm_host.h).
//
// One row at a time, two passes, the second from L1/L2: the forward reads x and residual, writes s
// and sums s^2, then writes y; the backward reads grad_y, s (and grad_s), sums s^2 and gw * s, then
// writes grad_s and adds grad_y * xhat into its chunk's weight-gradient row (cpu/row_chunks.h).
// Memory traffic per element: forward 5 reads/writes with a residual (x, r, s, y; weight is a
// cached row), 2 without; backward 3 (grad_y, s, grad_s out), 4 with grad_s in.
//
// The row algorithms are written once over a lane set (cpu/vec_math.h) and compiled for the
// baseline ISA and for AVX-512; cpu/capability.h picks one at run time.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>

#include "common/dispatch.h"
#include "common/rms_norm_host.h"
#include "cpu/capability.h"
#include "cpu/row_chunks.h"
#include "cpu/simd.h"
#include "cpu/vec_math.h"

MINILVLM_LANE_TEMPLATES_FILE

namespace minilvlm {
namespace {

template <typename T>
struct RmsRows {
  const T* x;         // the input, or s's source when there is no residual
  const T* residual;  // null: none
  const T* weight;
  T* y;
  T* s;  // written when there is a residual
  int64_t dim;
  float eps;
};

template <typename T>
struct RmsBackwardRows {
  const T* grad_y;
  const T* grad_s;  // null: none
  const T* s;
  const T* weight;
  T* grad_in;  // grad of s, hence of x and of residual
  int64_t dim;
  float eps;
};

// sum(v^2) over a row, one accumulator lane-wise, then across lanes: the forward and the backward
// both use this, so the backward's rstd is the forward's to the bit.
template <typename L>
__attribute__((always_inline)) inline typename L::V add_square(typename L::V acc, typename L::V v) {
  return L::fmadd(v, v, acc);
}
inline float rstd_of(float sum_squares, int64_t dim, float eps) {
  return 1.0f / std::sqrt(sum_squares / static_cast<float>(dim) + eps);
}

struct RmsForward {
  template <typename L, typename T>
  __attribute__((always_inline)) static void on_row(const RmsRows<T>& a, int64_t row, float*) {
    const int64_t D = a.dim, W = L::kWidth;
    const T* x = a.x + row * D;
    T* y = a.y + row * D;
    const T* src = x;
    typename L::V squares = L::splat(0.0f);
    if (a.residual) {
      const T* r = a.residual + row * D;
      T* s = a.s + row * D;
      for (int64_t i = 0; i < D; i += W) {
        L::store(s + i, L::add(L::load(x + i, D - i), L::load(r + i, D - i)), D - i);
        squares = add_square<L>(squares, L::load(s + i, D - i));  // s as stored: rounded to T
      }
      src = s;
    } else {
      for (int64_t i = 0; i < D; i += W) squares = add_square<L>(squares, L::load(x + i, D - i));
    }
    const auto rstd = L::splat(rstd_of(L::sum(squares), D, a.eps));
    for (int64_t i = 0; i < D; i += W) {
      const auto normed = L::template round_to<T>(L::mul(L::load(src + i, D - i), rstd));  // to x's dtype first
      L::store(y + i, L::mul(L::load(a.weight + i, D - i), normed), D - i);
    }
  }
};

struct RmsBackward {
  template <typename L, typename T>
  __attribute__((always_inline)) static void on_row(const RmsBackwardRows<T>& a, int64_t row, float* acc) {
    const int64_t D = a.dim, W = L::kWidth;
    const T* dy = a.grad_y + row * D;
    const T* s = a.s + row * D;
    typename L::V squares = L::splat(0.0f), dot = L::splat(0.0f);
    for (int64_t i = 0; i < D; i += W) {
      const auto v = L::load(s + i, D - i);
      squares = add_square<L>(squares, v);
      dot = L::fmadd(L::mul(L::load(dy + i, D - i), L::load(a.weight + i, D - i)), v, dot);
    }
    const float rstd = rstd_of(L::sum(squares), D, a.eps);
    const auto rstd_v = L::splat(rstd);
    const auto coef = L::splat(L::sum(dot) * rstd * rstd / static_cast<float>(D));
    T* out = a.grad_in + row * D;
    for (int64_t i = 0; i < D; i += W) {
      const auto g = L::load(dy + i, D - i), v = L::load(s + i, D - i);
      auto grad = L::mul(L::sub(L::mul(g, L::load(a.weight + i, D - i)), L::mul(v, coef)), rstd_v);
      if (a.grad_s) grad = L::add(grad, L::load(a.grad_s + row * D + i, D - i));
      L::store(out + i, grad, D - i);
      if (acc) L::store(acc + i, L::fmadd(g, L::template round_to<T>(L::mul(v, rstd_v)), L::load(acc + i, D - i)), D - i);
    }
  }
};

std::tuple<at::Tensor, at::Tensor> rms_norm_cpu(const at::Tensor& x_in, const std::optional<at::Tensor>& residual_in,
                                                const at::Tensor& weight_in, double eps) {
  const RowsShape shape = plan_rms_norm(x_in, residual_in, weight_in, eps);
  TORCH_CHECK(x_in.device().is_cpu(), "rms_norm (CPU kernel): tensors must be on the CPU, got ", x_in.device());
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  const std::optional<at::Tensor> residual =
      residual_in.has_value() ? std::optional<at::Tensor>(residual_in->contiguous()) : std::nullopt;
  RmsNormOutputs out = rms_norm_outputs(x, residual.has_value());
  dispatch_dtype<float, c10::BFloat16, c10::Half>(x.scalar_type(), "rms_norm", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const RmsRows<T> a{x.data_ptr<T>(), residual ? residual->data_ptr<T>() : nullptr, weight.data_ptr<T>(),
                       out.y.data_ptr<T>(), residual ? out.s.data_ptr<T>() : nullptr, shape.dim,
                       static_cast<float>(eps)};
    auto* rows_fn = pick_rows<RmsForward, RmsRows<T>>();
    for_row_chunks(shape.rows, shape.dim, 0, [&](int64_t r0, int64_t r1, float*) { rows_fn(a, r0, r1, nullptr); });
  });
  return {out.y, out.s};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_backward_cpu(const at::Tensor& grad_y, const std::optional<at::Tensor>& grad_s,
                                                         const at::Tensor& s_in, const at::Tensor& weight_in, double eps,
                                                         bool weight_grad) {
  const RowsShape shape = plan_rms_norm_backward(grad_y, grad_s, s_in, weight_in, eps);
  TORCH_CHECK(s_in.device().is_cpu(), "rms_norm_backward (CPU kernel): tensors must be on the CPU, got ",
              s_in.device());
  const at::Tensor s = s_in.contiguous(), weight = weight_in.contiguous(), dy = grad_y.contiguous();
  const std::optional<at::Tensor> ds =
      grad_s.has_value() ? std::optional<at::Tensor>(grad_s->contiguous()) : std::nullopt;
  at::Tensor grad_in = at::empty(s.sizes(), s.options());
  at::Tensor grad_weight;
  dispatch_dtype<float, c10::BFloat16, c10::Half>(s.scalar_type(), "rms_norm_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const RmsBackwardRows<T> a{dy.data_ptr<T>(), ds ? ds->data_ptr<T>() : nullptr, s.data_ptr<T>(),
                               weight.data_ptr<T>(), grad_in.data_ptr<T>(), shape.dim, static_cast<float>(eps)};
    auto* rows_fn = pick_rows<RmsBackward, RmsBackwardRows<T>>();
    grad_weight = for_row_chunks(shape.rows, shape.dim, weight_grad ? shape.dim : 0,
                                 [&](int64_t r0, int64_t r1, float* acc) { rows_fn(a, r0, r1, acc); });
  });
  return {grad_in, grad_weight.to(weight.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(minilvlm, CPU, m) {
  m.impl("rms_norm", &rms_norm_cpu);
  m.impl("rms_norm_backward", &rms_norm_backward_cpu);
}

}  // namespace minilvlm
