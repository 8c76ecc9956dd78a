// patch_embed_driver.h: the order of work of patch_embed and its backward, shared by the CPU
// kernel, the CUDA launcher and the emulator build. Each backend supplies two passes:
//   make_rows(pixels, rows)          pixels -> normalized patch rows [B*T, K] in weight's dtype
//                                    (zero rows at the class-token positions)
//   epilogue(out, bias, pos, cls)    in place over out [B, T, D]: + bias + pos on patch rows,
//                                    cls + pos[0] on class-token rows
// and the GEMMs and the small reductions go through ATen (oneDNN/MKL on the CPU, cuBLAS on the
// GPU, CPU matmuls under the emulator). Light ATen headers only, so the .cu file can include it.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>

#include <optional>
#include <tuple>

#include "common/patch_embed_geometry.h"

namespace minilvlm {

// Forward: one pass over the pixels, one GEMM written straight into the output, one pass over
// the output.
template <typename MakeRows, typename Epilogue>
at::Tensor run_patch_embed(const PatchGeometry& g, const at::Tensor& pixels, const at::Tensor& weight,
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
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_patch_embed_backward(const PatchGeometry& g,
                                                                        const at::Tensor& grad_out,
                                                                        const at::Tensor& pixels,
                                                                        const at::Tensor& weight, MakeRows make_rows,
                                                                        SumBatch sum_batch) {
  const int64_t rows_count = g.batch * g.tokens;
  const auto dtype = weight.scalar_type();
  const auto acc = dtype == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor rows = at::empty({rows_count, g.row_len}, weight.options());
  if (rows.numel() > 0) make_rows(pixels.contiguous(), rows);
  const at::Tensor grad = grad_out.contiguous();
  at::Tensor grad_weight = at::mm(grad.view({rows_count, g.dim}).t(), rows).view(weight.sizes());
  at::Tensor tokens_acc = sum_batch(grad, acc);
  at::Tensor grad_bias = sum_batch(tokens_acc.narrow(0, g.has_cls ? 1 : 0, g.patches).unsqueeze(1), acc)
                             .view({g.dim})
                             .to(dtype);
  return {grad_weight, grad_bias, tokens_acc.to(dtype)};
}

}  // namespace minilvlm
