// mm_adapter_host.h: the host side of mm_adapter and mm_adapter_backward that the CPU kernel and
// the CUDA launch code (cuda/mm_adapter_launch.h, also built for the emulator) share: the argument
// checks, so that every backend rejects the same bad input with the same message; the per-sample
// routing before the token loops; and the gradients after them. Host code only (light ATen
// headers, no CUDA).
//
// Shapes: x [B,T,D]; t [B,E]; router_w [P,E]; router_b [P]; down_w [r,D]; down_b [r];
// up_w [P,D,r/groups]; up_b [P,D]. E may be 0 (no router: with P=1 the softmax weight is 1,
// which is how RepAdapter runs through the same op).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/softmax.h>
#include <c10/util/Exception.h>

#include "common/philox.h"

#include <cmath>
#include <tuple>

namespace minilvlm {

// What mm_adapter_backward returns: the gradients of (x, t, router_w, router_b, down_w, down_b, up_w, up_b).
using MmAdapterGrads =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

struct MmAdapterShape {
  int64_t B, T, D, E, P, r, groups;
  int64_t rg;  // r / groups: the h entries one output channel reads
  int64_t Dg;  // D / groups: the output channels of one group
};

inline void check_mm_tensor(const at::Tensor& t, const char* name, std::initializer_list<int64_t> shape,
                            const at::Tensor& x) {
  TORCH_CHECK(t.sizes().equals(shape), "mm_adapter: ", name, " must have shape ", c10::IntArrayRef(shape),
              ", got ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), "mm_adapter: ", name, " is on ", t.device(), " but x is on ", x.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type() || t.scalar_type() == at::kFloat, "mm_adapter: ", name, " is ",
              t.scalar_type(), "; parameters must be float32 or x's dtype (", x.scalar_type(), ")");
}

inline MmAdapterShape check_mm_adapter(const at::Tensor& x, const at::Tensor& t, const at::Tensor& router_w,
                                       const at::Tensor& router_b, const at::Tensor& down_w,
                                       const at::Tensor& down_b, const at::Tensor& up_w, const at::Tensor& up_b,
                                       double temperature, int64_t groups) {
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf || dtype == at::kDouble,
              "mm_adapter: x must be float32, bfloat16, float16 or float64, got ", dtype);
  TORCH_CHECK(x.dim() == 3, "mm_adapter: x must be [batch, tokens, dim], got shape ", x.sizes());
  TORCH_CHECK(down_w.dim() == 2 && up_w.dim() == 3 && t.dim() == 2 && router_w.dim() == 2,
              "mm_adapter: expected down_w [r,D], up_w [P,D,r/groups], t [B,E], router_w [P,E]; got ",
              down_w.sizes(), ", ", up_w.sizes(), ", ", t.sizes(), ", ", router_w.sizes());
  MmAdapterShape s;
  s.B = x.size(0);
  s.T = x.size(1);
  s.D = x.size(2);
  s.r = down_w.size(0);
  s.P = up_w.size(0);
  s.E = t.size(1);
  s.groups = groups;
  TORCH_CHECK(groups >= 1 && s.D % groups == 0 && s.r % groups == 0, "mm_adapter: groups=", groups,
              " must divide both the dim D=", s.D, " and the hidden size r=", s.r);
  TORCH_CHECK(s.r >= 1 && s.r <= 64, "mm_adapter: hidden size r=", s.r, " must lie in [1, 64]");
  TORCH_CHECK(s.P >= 1 && s.P <= 8, "mm_adapter: the number of paths P=", s.P, " must lie in [1, 8]");
  TORCH_CHECK(s.E > 0 || s.P == 1, "mm_adapter: without a router (empty modality token) there must be one path; "
              "got P=", s.P);
  TORCH_CHECK(temperature > 0.0 && std::isfinite(temperature), "mm_adapter: temperature must be a positive number, "
              "got ", temperature);
  s.rg = s.r / groups;
  s.Dg = s.D / groups;
  check_mm_tensor(t, "t (modality token)", {s.B, s.E}, x);
  check_mm_tensor(router_w, "router_w", {s.P, s.E}, x);
  check_mm_tensor(router_b, "router_b", {s.P}, x);
  check_mm_tensor(down_w, "down_w", {s.r, s.D}, x);
  check_mm_tensor(down_b, "down_b", {s.r}, x);
  check_mm_tensor(up_w, "up_w", {s.P, s.D, s.rg}, x);
  check_mm_tensor(up_b, "up_b", {s.P, s.D}, x);
  return s;
}

// The dropout on h: p in [0, 1); the mask of element (b, t, k) of h is dropout_keep(keys, (b*T + t)*r + k).
inline DropoutKeys check_mm_dropout(double dropout, int64_t seed, int64_t offset) {
  TORCH_CHECK(dropout >= 0.0 && dropout < 1.0, "mm_adapter: dropout must lie in [0, 1), got ", dropout);
  return dropout_keys(dropout, seed, offset);
}

// mm_adapter_backward's arguments: those of mm_adapter, plus grad_out shaped, typed and placed like x.
inline MmAdapterShape check_mm_adapter_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& t,
                                                const at::Tensor& router_w, const at::Tensor& router_b,
                                                const at::Tensor& down_w, const at::Tensor& down_b,
                                                const at::Tensor& up_w, const at::Tensor& up_b, double temperature,
                                                int64_t groups) {
  const MmAdapterShape s = check_mm_adapter(x, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature, groups);
  TORCH_CHECK(grad_out.sizes() == x.sizes() && grad_out.scalar_type() == x.scalar_type(),
              "mm_adapter_backward: grad_out must match x (", x.scalar_type(), " ", x.sizes(), "), got ",
              grad_out.scalar_type(), " ", grad_out.sizes());
  TORCH_CHECK(grad_out.device() == x.device(), "mm_adapter_backward: grad_out is on ", grad_out.device(),
              " but x is on ", x.device());
  return s;
}

// The per-sample part, identical on every backend and tiny next to the token loops (B x P x D):
// routing weights w [B,P] and the effective up-projections, pre-multiplied by the scale and
// transposed so that the channel index d is contiguous: UsT [B, rg, D], cs [B, D]. Also the
// parameters the token loops read, converted to the accumulation dtype (float, or double for
// float64 x). ATen ops, so they run on the tensors' device.
struct MmRouting {
  at::Tensor w, UsT, cs;        // per sample
  at::Tensor A, bA, upT, up_b;  // down_w [r,D], down_b [r], up_w as [P, rg*D], up_b [P,D]
  at::Tensor t, router_w;       // in the accumulation dtype, for the backward
};

inline MmRouting mm_route(const MmAdapterShape& s, const at::Tensor& x, const at::Tensor& t, const at::Tensor& router_w,
                          const at::Tensor& router_b, const at::Tensor& down_w, const at::Tensor& down_b,
                          const at::Tensor& up_w, const at::Tensor& up_b, double temperature, double scale) {
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  MmRouting m;
  m.t = t.to(acc);
  m.router_w = router_w.to(acc);
  const at::Tensor logits = at::addmm(router_b.to(acc), m.t, m.router_w.t()).div_(temperature);
  m.w = at::softmax(logits, -1);
  m.A = down_w.to(acc).contiguous();
  m.bA = down_b.to(acc).contiguous();
  m.upT = up_w.to(acc).permute({0, 2, 1}).contiguous().view({s.P, s.rg * s.D});
  m.up_b = up_b.to(acc).contiguous();
  m.UsT = at::mm(m.w, m.upT).mul_(scale).contiguous();
  m.cs = at::mm(m.w, m.up_b).mul_(scale).contiguous();
  return m;
}

// The gradients from the token-loop sums dA [r,D], db_A [r], G [B, rg*D] (sum over a sample's
// tokens of h dy^T, grouped) and S [B,D] (sum of dy):
//   dU_i = s sum_b w_bi G_b;  dc_i = s sum_b w_bi S_b;  dw_bi = s (<U_i, G_b> + <c_i, S_b>);
//   the softmax and temperature give dlogits; dW_r = dlogits^T t, db_r = sum_b dlogits, dt = dlogits W_r.
// Returns (dt, drouter_w, drouter_b, ddown_w, ddown_b, dup_w, dup_b) in the parameters' dtypes.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mm_finalize(
    const MmAdapterShape& s, const MmRouting& m, const at::Tensor& dA, const at::Tensor& dbA, const at::Tensor& G,
    const at::Tensor& S, double temperature, double scale, const at::Tensor& t, const at::Tensor& router_w,
    const at::Tensor& router_b, const at::Tensor& down_w, const at::Tensor& down_b, const at::Tensor& up_w,
    const at::Tensor& up_b) {
  const at::Tensor wT = m.w.t();
  const at::Tensor dupT = at::mm(wT, G).mul_(scale);  // [P, rg*D]
  const at::Tensor dup_w = dupT.view({s.P, s.rg, s.D}).permute({0, 2, 1}).contiguous();
  const at::Tensor dup_b = at::mm(wT, S).mul_(scale);
  const at::Tensor dw = at::addmm(at::mm(S, m.up_b.t()), G, m.upT.t()).mul_(scale);  // [B, P]
  const at::Tensor dlogits = dw.sub(m.w.mul(dw).sum(-1, true)).mul_(m.w).div_(temperature);
  return {at::mm(dlogits, m.router_w).to(t.scalar_type()),
          at::mm(dlogits.t(), m.t).to(router_w.scalar_type()),
          dlogits.sum(0).to(router_b.scalar_type()),
          dA.to(down_w.scalar_type()),
          dbA.to(down_b.scalar_type()),
          dup_w.to(up_w.scalar_type()),
          dup_b.to(up_b.scalar_type())};
}

}  // namespace minilvlm
