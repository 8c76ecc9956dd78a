// linear_cross_entropy_host.h: the host side of linear_cross_entropy that the CPU kernel and the
// CUDA launch code (cuda/linear_cross_entropy_launch.h, also built for the emulator) share: the
// argument checks, so that every backend rejects the same bad input with the same message, and the
// order of work around the backend's one fused pass. Host code only (light ATen headers, no CUDA).
//
// The loss of the LM head over the N positions that have a target, chunk_rows rows at a time:
//   logits   = h[rows] @ W^T (+ b)        GEMM into one [chunk_rows, V] buffer in compute_dtype,
//                                          reused by every chunk
//   pass     per row: lse = logsumexp, loss = lse - logit[target] (fp32); then, when gradients are
//            wanted, the buffer is overwritten in place by softmax - one_hot (computed in fp32,
//            stored in compute_dtype) and its column sums are added to grad_bias (fp32)
//   dh[rows] = grad @ W                    GEMM
//   dW      += grad^T @ h[rows]            GEMM; dW comes back in weight's dtype. Where the GEMM can
//                                          write it (fp32, or one chunk in weight's dtype) it does, so
//                                          no pass over V x D is added; otherwise each bf16/fp16 GEMM
//                                          writes a partial that is summed in fp32 and the last one is
//                                          added and rounded in the same pass
// The GEMMs are ATen's (oneDNN/MKL on the CPU, cuBLAS on the GPU, CPU matmuls under the emulator);
// the backend supplies the pass. No fp32 logits exist beyond the row being reduced, and nothing is
// read back to the host: the loss is the sum of the per-row losses, still on the device.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>
#include <utility>

namespace minilvlm {

inline bool lce_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf; }

struct LceShape {
  int64_t rows = 0, dim = 0, vocab = 0;
};

inline void check_lce_float(const at::Tensor& t, const char* name, const char* op) {
  TORCH_CHECK(lce_dtype(t.scalar_type()), op, ": ", name, " must be float32, bfloat16 or float16, got ",
              t.scalar_type());
}

inline LceShape plan_linear_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight,
                                          const std::optional<at::Tensor>& bias, const at::Tensor& targets,
                                          at::ScalarType compute_dtype, int64_t chunk_rows) {
  const char* op = "linear_cross_entropy";
  TORCH_CHECK(lce_dtype(compute_dtype), op, ": compute_dtype must be float32, bfloat16 or float16, got ",
              compute_dtype);
  TORCH_CHECK(hidden.dim() == 2, op, ": hidden must be 2-D [N, D], got shape ", hidden.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == hidden.size(1) && weight.size(0) > 0, op,
              ": weight must be [V, ", hidden.size(1), "] with V > 0 for hidden of shape ", hidden.sizes(), ", got ",
              weight.sizes());
  check_lce_float(hidden, "hidden", op);
  check_lce_float(weight, "weight", op);
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": bias must be [", weight.size(0),
                "], got ", bias->sizes());
    check_lce_float(*bias, "bias", op);
  }
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == hidden.size(0), op, ": targets must be [", hidden.size(0),
              "], one per row of hidden, got ", targets.sizes());
  TORCH_CHECK(targets.scalar_type() == at::kLong, op, ": targets must be int64, got ", targets.scalar_type());
  TORCH_CHECK(chunk_rows > 0, op, ": chunk_rows must be positive, got ", chunk_rows);
  const auto same_device = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.device() == hidden.device(), op, ": ", name, " is on ", t.device(), " but hidden is on ",
                hidden.device(), " (one device for all)");
  };
  same_device(weight, "weight");
  same_device(targets, "targets");
  if (bias.has_value()) same_device(*bias, "bias");
  return LceShape{hidden.size(0), hidden.size(1), weight.size(0)};
}

// The sum over chunks of grad^T @ h[rows] into dw (weight's dtype), with the fewest passes over V x D:
//   the GEMM writes dw itself when dw is in compute dtype and it is fp32 (addmm accumulates) or there
//   is one chunk; fp32 compute into a low-precision dw sums in an fp32 buffer, copied once at the end;
//   bf16/fp16 compute writes each chunk's GEMM into a partial in compute dtype, sums the partials in
//   fp32 (in dw itself when dw is fp32) and adds the last partial while rounding into dw.
class WeightGradSum {
 public:
  WeightGradSum(at::Tensor dw, at::ScalarType compute, bool one_chunk) : dw_(std::move(dw)) {
    const bool dw_in_compute = dw_.scalar_type() == compute;
    direct_ = dw_in_compute && (compute == at::kFloat || one_chunk);
    if (direct_) return;
    if (compute != at::kFloat) part_ = at::empty(dw_.sizes(), dw_.options().dtype(compute));
    if (dw_.scalar_type() == at::kFloat)
      sum_ = dw_;
    else if (compute == at::kFloat || !one_chunk)
      sum_ = at::empty(dw_.sizes(), dw_.options().dtype(at::kFloat));
  }

  void add(const at::Tensor& grad_t, const at::Tensor& h_rows, bool first, bool last) {
    if (!part_.defined()) {   // dw itself or fp32 compute: the GEMM accumulates in fp32 by itself
      at::Tensor& into = direct_ ? dw_ : sum_;
      if (first)
        at::mm_out(into, grad_t, h_rows);
      else
        into.addmm_(grad_t, h_rows);
      if (last && !direct_) dw_.copy_(sum_);
      return;
    }
    at::mm_out(part_, grad_t, h_rows);
    if (!sum_.defined()) {   // one chunk, dw in a low dtype other than compute's: one rounding copy
      dw_.copy_(part_);
    } else if (first) {
      sum_.copy_(part_);
    } else if (last && !sum_.is_same(dw_)) {
      at::add_out(dw_, sum_, part_);   // the last partial added while rounding into dw's dtype
    } else {
      sum_.add_(part_);
    }
  }

 private:
  at::Tensor dw_, sum_, part_;   // part_: a chunk's GEMM in bf16/fp16, defined only where one is needed
  bool direct_ = false;
};

// The order of work. softmax_pass(logits [n, V], targets [n], row_loss [n], grad_bias, write_grad)
// is the backend's: row_loss gets lse - logit[target] per row; with write_grad the logits become
// softmax - one_hot in place, and their column sums are added to grad_bias when it is defined.
// Returns (loss, grad_hidden, grad_weight, grad_bias), the gradients not asked for as empty tensors.
template <typename SoftmaxPass>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> run_linear_cross_entropy(
    const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& targets, at::ScalarType compute, int64_t chunk_rows, std::array<bool, 3> mask,
    SoftmaxPass softmax_pass) {
  const LceShape s = plan_linear_cross_entropy(hidden, weight, bias, targets, compute, chunk_rows);
  const auto f32 = hidden.options().dtype(at::kFloat);
  const auto low = hidden.options().dtype(compute);
  const bool grad_h = mask[0], grad_w = mask[1], grad_b = mask[2] && bias.has_value();
  const bool grads = grad_h || grad_w || grad_b;
  at::Tensor dh = at::empty({grad_h ? s.rows : 0, grad_h ? s.dim : 0}, low);
  const auto wdt = hidden.options().dtype(weight.scalar_type());
  at::Tensor dw = grad_w ? (s.rows == 0 ? at::zeros({s.vocab, s.dim}, wdt) : at::empty({s.vocab, s.dim}, wdt))
                         : at::empty({0}, wdt);
  at::Tensor db = grad_b ? at::zeros({s.vocab}, f32) : at::empty({0}, f32);
  at::Tensor row_loss = at::empty({s.rows}, f32);
  if (s.rows == 0) return {at::zeros({}, f32), dh, dw, db};

  const at::Tensor h = hidden.to(compute).contiguous(), w = weight.to(compute).contiguous();
  const std::optional<at::Tensor> b = bias.has_value() ? std::optional<at::Tensor>(bias->to(compute)) : std::nullopt;
  const at::Tensor tgt = targets.contiguous();
  const int64_t chunk = std::min(chunk_rows, s.rows);
  at::Tensor buffer = at::empty({chunk, s.vocab}, low);
  WeightGradSum dw_sum(dw, compute, chunk >= s.rows);
  for (int64_t start = 0; start < s.rows; start += chunk) {
    const int64_t n = std::min(chunk, s.rows - start);
    at::Tensor logits = buffer.narrow(0, 0, n);
    const at::Tensor h_rows = h.narrow(0, start, n);
    if (b.has_value())
      at::addmm_out(logits, *b, h_rows, w.t());
    else
      at::mm_out(logits, h_rows, w.t());
    softmax_pass(logits, tgt.narrow(0, start, n), row_loss.narrow(0, start, n), grad_b ? db : at::Tensor(), grads);
    if (grad_h) {
      at::Tensor dh_rows = dh.narrow(0, start, n);
      at::mm_out(dh_rows, logits, w);
    }
    if (grad_w) dw_sum.add(logits.t(), h_rows, start == 0, start + n >= s.rows);
  }
  return {row_loss.sum(), dh, dw, db};
}

}  // namespace minilvlm
