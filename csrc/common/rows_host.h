// rows_host.h: the argument checks that the CPU kernels and the CUDA launch code of the row and
// elementwise ops (rms_norm, layer_norm, swiglu, gelu) share, so that every backend rejects the
// same bad input with the same message, and the [rows, dim] view of a tensor whose last dimension
// is normalized. Host code only (light ATen headers, no CUDA).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>

namespace minilvlm {

// The kernels compute in float32 and store float32, bfloat16 or float16; float64 runs through the
// Python reference (minilvlm/ops/<op>.py).
inline void check_kernel_dtype(const at::Tensor& x, const char* name, const char* op) {
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kBFloat16 || t == at::kHalf, op, ": ", name,
              " must be float32, bfloat16 or float16, got ", t, "; minilvlm.ops.", op,
              " runs the reference for other dtypes");
}

// `t` must have the shape, dtype and device of `ref`.
inline void check_same_as(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name,
                          const char* op) {
  TORCH_CHECK(t.sizes() == ref.sizes(), op, ": ", name, " must have the shape of ", ref_name, " ", ref.sizes(),
              ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " is ", t.scalar_type(), " but ", ref_name,
              " is ", ref.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ",
              ref.device());
}

// A per-channel parameter (weight, bias) of a norm over the last dimension of x: shape [dim].
inline void check_channel_param(const at::Tensor& t, const char* name, const at::Tensor& x, const char* op) {
  const int64_t dim = x.size(-1);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == dim, op, ": ", name, " must have shape [", dim,
              "] (the last dimension of x, shape ", x.sizes(), "), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " is ", t.scalar_type(), " but x is ",
              x.scalar_type(), "; minilvlm.ops.", op, " casts them to one dtype");
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
}

inline void check_eps(double eps, const char* op) {
  TORCH_CHECK(eps >= 0.0, op, ": eps must be >= 0, got ", eps);
}

// x as [rows, dim] rows of its last dimension, the layout of every norm kernel.
struct RowsShape {
  int64_t rows = 0, dim = 0;
};

inline RowsShape norm_rows(const at::Tensor& x, const char* op) {
  check_kernel_dtype(x, "x", op);
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) >= 1, op, ": x must have a last dimension of at least 1 to normalize, got shape ",
              x.sizes());
  return RowsShape{x.numel() / x.size(-1), x.size(-1)};
}

}  // namespace minilvlm
