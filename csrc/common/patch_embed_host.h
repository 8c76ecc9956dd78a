// patch_embed_host.h: the host side of patch_embed / patch_embed_backward that the CPU kernel and
// the CUDA launch code (cuda/patch_embed_launch.h, also built for the emulator) share: the argument
// checks, so that every backend rejects the same bad input with the same message; the shape and
// normalization plans; and the order of work around the backend's own passes (the GEMMs and the
// small reductions go through ATen). Host code only (light ATen headers, no CUDA).
//
// The plan describes one "patch row" per output token: row (b, t) of a [B*T, K] matrix holds
// the normalized pixels of patch t - has_cls of image b, flattened in Conv2d weight order
// (c, ky, kx), K = C*p*p. With a class token, row (b, 0) is all zeros, so one GEMM
// rows @ weight^T writes straight into the [B*T, D] output (its class-token rows are then
// overwritten by the epilogue), and in backward grad_out^T @ rows is dW with no copy of grad_out.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <c10/util/Exception.h>

#include <optional>
#include <tuple>
#include <vector>

#include "common/patch_embed_math.h"

namespace minilvlm {

inline bool patch_embed_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf || t == at::kDouble;
}

// Per-channel x * scale + shift == (x / 255 - mean) / std for uint8 (x - mean) / std for float.
struct PatchNormHost {
  std::vector<double> scale, shift;
};

inline PatchNormHost plan_patch_norm(int64_t channels, bool is_uint8, const std::optional<at::ArrayRef<double>>& mean,
                                     const std::optional<at::ArrayRef<double>>& std, const char* op) {
  if (mean.has_value())
    TORCH_CHECK(static_cast<int64_t>(mean->size()) == channels, op, ": mean has ", mean->size(),
                " values but the image has ", channels, " channels");
  if (std.has_value())
    TORCH_CHECK(static_cast<int64_t>(std->size()) == channels, op, ": std has ", std->size(),
                " values but the image has ", channels, " channels");
  PatchNormHost n;
  const double in_scale = is_uint8 ? 1.0 / 255.0 : 1.0;
  for (int64_t c = 0; c < channels; ++c) {
    const double m = mean.has_value() ? (*mean)[c] : 0.0;
    const double s = std.has_value() ? (*std)[c] : 1.0;
    TORCH_CHECK(s != 0.0, op, ": std[", c, "] is 0");
    n.scale.push_back(in_scale / s);
    n.shift.push_back(-m / s);
  }
  return n;
}

// Checks pixels and weight and returns the geometry; pixels [B,C,H,W] or [B,H,W,C].
inline PatchGeometry plan_patch_geometry(const at::Tensor& pixels, const at::Tensor& weight, int64_t patch_size,
                                         bool channels_last, bool has_cls, const char* op) {
  TORCH_CHECK(pixels.scalar_type() == at::kByte || pixels.scalar_type() == at::kFloat, op,
              ": pixels must be uint8 or float32, got ", pixels.scalar_type());
  TORCH_CHECK(patch_embed_float_dtype(weight.scalar_type()), op,
              ": weight must be float32, bfloat16, float16 or float64, got ", weight.scalar_type());
  TORCH_CHECK(patch_size > 0, op, ": patch_size must be positive, got ", patch_size);
  TORCH_CHECK(pixels.dim() == 4, op, ": pixels must be 4-D ", (channels_last ? "[B,H,W,C]" : "[B,C,H,W]"),
              ", got shape ", pixels.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == patch_size && weight.size(3) == patch_size, op,
              ": weight must be [D, C, ", patch_size, ", ", patch_size, "] for patch_size ", patch_size,
              ", got shape ", weight.sizes());
  TORCH_CHECK(pixels.device() == weight.device(), op, ": pixels are on ", pixels.device(), " but weight is on ",
              weight.device());
  PatchGeometry g;
  g.batch = pixels.size(0);
  g.channels = channels_last ? pixels.size(3) : pixels.size(1);
  g.height = channels_last ? pixels.size(1) : pixels.size(2);
  g.width = channels_last ? pixels.size(2) : pixels.size(3);
  g.patch = patch_size;
  g.dim = weight.size(0);
  TORCH_CHECK(weight.size(1) == g.channels, op, ": pixels of shape ", pixels.sizes(), " have ", g.channels,
              " channels", (channels_last ? " (channels_last)" : ""), " but weight of shape ", weight.sizes(),
              " expects ", weight.size(1));
  TORCH_CHECK(g.height % patch_size == 0 && g.width % patch_size == 0, op, ": image size ", g.height, "x",
              g.width, " (pixels of shape ", pixels.sizes(), ") is not a multiple of patch_size ", patch_size);
  g.grid_w = g.width / patch_size;
  g.patches = (g.height / patch_size) * g.grid_w;
  g.has_cls = has_cls;
  g.tokens = g.patches + (has_cls ? 1 : 0);
  g.row_len = g.channels * patch_size * patch_size;
  g.channels_last = channels_last;
  return g;
}

inline void check_param(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& weight,
                        std::vector<int64_t> shape, const char* op) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->sizes() == at::IntArrayRef(shape), op, ": ", name, " must have shape ", at::IntArrayRef(shape),
              ", got ", t->sizes());
  TORCH_CHECK(t->scalar_type() == weight.scalar_type(), op, ": ", name, " is ", t->scalar_type(),
              " but weight is ", weight.scalar_type());
  TORCH_CHECK(t->device() == weight.device(), op, ": ", name, " is on ", t->device(), " but weight is on ",
              weight.device());
}

inline PatchGeometry plan_patch_embed(const at::Tensor& pixels, const at::Tensor& weight,
                                      const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos,
                                      const std::optional<at::Tensor>& cls, int64_t patch_size, bool channels_last) {
  const char* op = "patch_embed";
  const PatchGeometry g = plan_patch_geometry(pixels, weight, patch_size, channels_last, cls.has_value(), op);
  check_param(bias, "bias", weight, {g.dim}, op);
  check_param(cls, "cls_token", weight, {g.dim}, op);
  if (pos.has_value())
    TORCH_CHECK(pos->dim() == 2 && pos->size(0) == g.tokens && pos->size(1) == g.dim, op, ": pos_embed must be [",
                g.tokens, ", ", g.dim, "] (", g.patches, " patches of pixels ", pixels.sizes(),
                (g.has_cls ? " plus the class token" : ""), ", D=", g.dim, "), got ", pos->sizes());
  check_param(pos, "pos_embed", weight, {g.tokens, g.dim}, op);
  return g;
}

inline PatchGeometry plan_patch_embed_backward(const at::Tensor& grad_out, const at::Tensor& pixels,
                                               const at::Tensor& weight, int64_t patch_size, bool channels_last,
                                               bool has_cls) {
  const char* op = "patch_embed_backward";
  const PatchGeometry g = plan_patch_geometry(pixels, weight, patch_size, channels_last, has_cls, op);
  TORCH_CHECK(grad_out.dim() == 3 && grad_out.size(0) == g.batch && grad_out.size(1) == g.tokens &&
                  grad_out.size(2) == g.dim,
              op, ": grad_out must be [", g.batch, ", ", g.tokens, ", ", g.dim, "], got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == weight.scalar_type(), op, ": grad_out is ", grad_out.scalar_type(),
              " but weight is ", weight.scalar_type());
  TORCH_CHECK(grad_out.device() == weight.device(), op, ": grad_out is on ", grad_out.device(),
              " but weight is on ", weight.device());
  return g;
}

// ---------------------------------------------------------------------------------------
// the order of work; each backend supplies its two passes:
//   make_rows(pixels, rows)          pixels -> normalized patch rows [B*T, K] in weight's dtype
//                                    (zero rows at the class-token positions)
//   epilogue(out, bias, pos, cls)    in place over out [B, T, D]: + bias + pos on patch rows,
//                                    cls + pos[0] on class-token rows
// and ATen does the GEMMs (oneDNN/MKL on the CPU, cuBLAS on the GPU, CPU matmuls under the
// emulator).

// Forward: one pass over the pixels, one GEMM written straight into the output, one pass over
// the output.
template <typename MakeRows, typename Epilogue>
at::Tensor run_patch_embed_passes(const PatchGeometry& g, const at::Tensor& pixels, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos,
                                  const std::optional<at::Tensor>& cls, MakeRows make_rows, Epilogue epilogue) {
  const int64_t rows_count = g.batch * g.tokens;
  at::Tensor rows = at::empty({rows_count, g.row_len}, weight.options());
  if (rows.numel() > 0) make_rows(pixels.contiguous(), rows);
  at::Tensor out = at::empty({g.batch, g.tokens, g.dim}, weight.options());
  if (out.numel() == 0) return out;
  at::Tensor out_rows = out.view({rows_count, g.dim});
  at::mm_out(out_rows, rows, weight.contiguous().view({g.dim, g.row_len}).t());  // rows @ W^T
  const auto contiguous = [](const std::optional<at::Tensor>& t) {
    return t.has_value() ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
  };
  epilogue(out, contiguous(bias), contiguous(pos), contiguous(cls));
  return out;
}

// Backward: recompute the patch rows (cheaper than keeping them: K elements per token against
// C*p*p pixels read), then
//   grad_weight = grad_out^T @ rows           one GEMM over all B*T rows; the zero class-token
//                                             rows contribute nothing
//   grad_tokens = sum over the batch of grad_out     = grad pos_embed; row 0 = grad cls_token
//   grad_bias   = sum of grad_tokens over the patch rows
// Reductions accumulate in float32 (float64 for float64) and round once.
// sum_batch(grad, acc_dtype) -> [T, D] may be supplied by the backend (the CPU has a faster one);
// aten_sum_batch is the default.
inline at::Tensor aten_sum_batch(const at::Tensor& grad, at::ScalarType acc) {
  const int64_t first = 0;
  return at::sum(grad, at::IntArrayRef(first), /*keepdim=*/false, acc);
}

template <typename MakeRows, typename SumBatch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_patch_embed_backward_passes(
    const PatchGeometry& g, const at::Tensor& grad_out, const at::Tensor& pixels, const at::Tensor& weight,
    MakeRows make_rows, SumBatch sum_batch) {
  const int64_t rows_count = g.batch * g.tokens;
  const auto dtype = weight.scalar_type();
  const auto acc = dtype == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor rows = at::empty({rows_count, g.row_len}, weight.options());
  if (rows.numel() > 0) make_rows(pixels.contiguous(), rows);
  const at::Tensor grad = grad_out.contiguous();
  // dW = grad^T @ rows, one GEMM written in the weight's [D, K] layout. (Until stop 32 the fp32 CPU
  // path formed (rows^T @ grad)^T, a [K, D] GEMM and a transpose copy; re-timed on the AMX Xeon at
  // ViT-L/14 b8 the direct form is the faster one in fp32 too, 8.9 against 9.8 ms, as it is in bf16,
  // 2.2 against 3.2 ms, and on Zen 4.)
  const at::Tensor grad_rows = grad.view({rows_count, g.dim});
  at::Tensor grad_weight = at::mm(grad_rows.t(), rows).view(weight.sizes());
  at::Tensor tokens_acc = sum_batch(grad, acc);
  at::Tensor grad_bias = sum_batch(tokens_acc.narrow(0, g.has_cls ? 1 : 0, g.patches).unsqueeze(1), acc)
                             .view({g.dim})
                             .to(dtype);
  return {grad_weight, grad_bias, tokens_acc.to(dtype)};
}

}  // namespace minilvlm
