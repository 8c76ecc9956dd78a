// rope_host.h: the host side of rope_ / rope_backward that the CPU kernel and the CUDA launch code
// (cuda/rope_launch.h, also built for the emulator) share: the argument checks, so that every
// backend rejects the same bad input with the same message; the geometry; and the order of work
// around the backend's one pass. Host code only (light ATen headers, no CUDA).
//
// rope_ rotates q (and k) in place: it reads and writes only the rotary channels, so Phi's partial
// rotary (40% of each head) moves 40% of the bytes. rope_backward is the rotation by -angle of
// grad into a new tensor with grad's strides; its pass-through channels are copied.
#pragma once

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

#include <optional>

#include "common/rope_math.h"

namespace minilvlm {

inline bool rope_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf; }

inline RopeSide rope_side(const at::Tensor& x, const char* name, const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": ", name, " must be 4-D [B, H, T, head_dim], got shape ", x.sizes());
  TORCH_CHECK(rope_dtype(x.scalar_type()), op, ": ", name, " must be float32, bfloat16 or float16, got ",
              x.scalar_type());
  TORCH_CHECK(x.size(3) <= 1 || x.stride(3) == 1, op, ": ", name,
              " must have contiguous channels (stride 1 in the last dimension), got strides ", x.strides());
  return RopeSide{x.size(1), x.stride(0), x.stride(1), x.stride(2)};
}

// Checks x (q, or the gradient) and the tables, and returns the geometry with x as the q side.
inline RopeGeometry plan_rope_tables(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                                     const char* name, const char* op) {
  RopeGeometry g;
  g.q = rope_side(x, name, op);
  g.batch = x.size(0);
  g.tokens = x.size(2);
  g.head_dim = x.size(3);
  for (const at::Tensor* t : {&cos, &sin}) {
    const char* table = t == &cos ? "cos" : "sin";
    TORCH_CHECK(t->scalar_type() == at::kFloat, op, ": ", table, " must be float32, got ", t->scalar_type());
    TORCH_CHECK(t->dim() == 3 && (t->size(0) == g.batch || t->size(0) == 1) && t->size(1) == g.tokens, op, ": ",
                table, " must be [", g.batch, " or 1, ", g.tokens, ", rotary_dim / 2] for ", name, " of shape ",
                x.sizes(), ", got ", t->sizes());
    TORCH_CHECK(t->size(2) <= 1 || t->stride(2) == 1, op, ": ", table,
                " must be contiguous in its last dimension, got strides ", t->strides());
    TORCH_CHECK(t->device() == x.device(), op, ": ", table, " is on ", t->device(), " but ", name, " is on ",
                x.device(), " (one device for all)");
  }
  TORCH_CHECK(cos.sizes() == sin.sizes() && cos.strides() == sin.strides(), op,
              ": cos and sin must have the same shape and strides, got ", cos.sizes(), " and ", sin.sizes());
  g.half = cos.size(2);
  TORCH_CHECK(2 * g.half <= g.head_dim, op, ": the tables rotate ", 2 * g.half, " channels but ", name,
              " has head_dim ", g.head_dim);
  g.cos_stride_b = cos.size(0) == 1 ? 0 : cos.stride(0);
  g.cos_stride_t = cos.stride(1);
  return g;
}

inline RopeGeometry plan_rope(const at::Tensor& q, const std::optional<at::Tensor>& k, const at::Tensor& cos,
                              const at::Tensor& sin) {
  const char* op = "rope_";
  RopeGeometry g = plan_rope_tables(q, cos, sin, "q", op);
  at::assert_no_internal_overlap(q);
  if (!k.has_value()) return g;
  g.k = rope_side(*k, "k", op);
  TORCH_CHECK(k->scalar_type() == q.scalar_type(), op, ": k is ", k->scalar_type(), " but q is ", q.scalar_type());
  TORCH_CHECK(k->size(0) == q.size(0) && k->size(2) == q.size(2) && k->size(3) == q.size(3), op,
              ": k must be [", q.size(0), ", H_kv, ", q.size(2), ", ", q.size(3), "] like q of shape ", q.sizes(),
              ", got ", k->sizes());
  TORCH_CHECK(k->device() == q.device(), op, ": k is on ", k->device(), " but q is on ", q.device(),
              " (one device for all)");
  at::assert_no_internal_overlap(*k);
  at::assert_no_overlap(q, *k);
  return g;
}

// ---------------------------------------------------------------------------------------
// the order of work; each backend supplies one pass
//   rotate(g, q_src, q_dst, k_src, k_dst, cos, sin, inverse, copy_rest)
// which rotates the rotary channels of every (b, h, t) row of src into dst (src and dst share
// their strides; they are the same tensor in place), by -angle when inverse, and copies the
// pass-through channels when copy_rest. An undefined k is absent.

template <typename Rotate>
void run_rope_(const at::Tensor& q, const std::optional<at::Tensor>& k, const at::Tensor& cos, const at::Tensor& sin,
               Rotate rotate) {
  const RopeGeometry g = plan_rope(q, k, cos, sin);
  if (g.batch * g.tokens == 0 || g.half == 0) return;
  const at::Tensor k_tensor = k.has_value() ? *k : at::Tensor();
  rotate(g, q, q, k_tensor, k_tensor, cos, sin, /*inverse=*/false, /*copy_rest=*/false);
}

// The gradient as the backward walks it: the output takes its strides, so both are walked the same
// way; a gradient that cannot lend them (expanded, as a sum's gradient is, or with channels not
// contiguous) is made contiguous first.
inline at::Tensor rope_walkable(const at::Tensor& grad) {
  if (grad.dim() != 4) return grad;  // the plan reports it
  const bool usable = grad.is_non_overlapping_and_dense() && (grad.size(3) <= 1 || grad.stride(3) == 1);
  return usable ? grad : grad.contiguous();
}

template <typename Rotate>
at::Tensor run_rope_backward(const at::Tensor& grad_in, const at::Tensor& cos, const at::Tensor& sin, Rotate rotate) {
  const at::Tensor grad = rope_walkable(grad_in);
  const RopeGeometry g = plan_rope_tables(grad, cos, sin, "grad", "rope_backward");
  at::Tensor out = at::empty_like(grad);
  if (out.numel() > 0) rotate(g, grad, out, at::Tensor(), at::Tensor(), cos, sin, /*inverse=*/true, /*copy_rest=*/true);
  return out;
}

}  // namespace minilvlm
