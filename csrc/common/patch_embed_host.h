// patch_embed_host.h: argument checks and the shape plan of patch_embed / patch_embed_backward,
// shared by the CPU kernel, the CUDA launcher and the emulator build so that every backend
// rejects the same bad input with the same message. Host code only (ATen core, no CUDA).
//
// The plan describes one "patch row" per output token: row (b, t) of a [B*T, K] matrix holds
// the normalized pixels of patch t - has_cls of image b, flattened in Conv2d weight order
// (c, ky, kx), K = C*p*p. With a class token, row (b, 0) is all zeros, so one GEMM
// rows @ weight^T writes straight into the [B*T, D] output (its class-token rows are then
// overwritten by the epilogue), and in backward grad_out^T @ rows is dW with no copy of grad_out.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <vector>

#include "common/patch_embed_geometry.h"

namespace minilvlm {

inline bool patch_embed_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kDouble;
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
              ": weight must be float32, bfloat16 or float64, got ", weight.scalar_type());
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

}  // namespace minilvlm
