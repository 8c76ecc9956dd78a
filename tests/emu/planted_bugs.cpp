// planted_bugs.cpp: the planted-bug kernels of tests/emu/planted_bugs.cuh as torch ops,
// torch.ops.minilvlm_emu.planted_<bug>(..., bool bug), run by the SIMT emulator on CPU tensors.
// Built into minilvlm._emu (an "emu" line of csrc/sources.txt) so that the tests can launch them
// through the same compiled checks as every other kernel. Torch headers first, as always.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>

#include "planted_bugs.cuh"

namespace minilvlm {
namespace planted {
namespace {

at::Tensor f32(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, what, " must be a float32 CPU tensor");
  return t.contiguous();
}

unsigned blocks_for(int64_t n, int64_t per_block) { return static_cast<unsigned>((n + per_block - 1) / per_block); }

at::Tensor missing_barrier(const at::Tensor& x_, const at::Tensor& w_, bool bug) {
  const at::Tensor x = f32(x_, "x"), w = f32(w_, "w");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "x [T, D] and w [r, D]");
  const int T = static_cast<int>(x.size(0)), D = static_cast<int>(x.size(1)), r = static_cast<int>(w.size(0));
  at::Tensor out = at::empty({T, r}, x.options());
  auto* kernel = bug ? &missing_barrier_kernel<true> : &missing_barrier_kernel<false>;
  MINILVLM_LAUNCH(kernel, blocks_for(T, kTileRows), kThreads, sizeof(float) * kTileRows * r, 0)(
      x.data_ptr<float>(), w.data_ptr<float>(), out.data_ptr<float>(), T, D, r);
  return out;
}

at::Tensor masked_tail(const at::Tensor& rows_, const at::Tensor& v_, bool bug) {
  const at::Tensor rows = f32(rows_, "rows"), v = f32(v_, "v");
  TORCH_CHECK(rows.dim() == 2 && v.dim() == 1 && rows.size(1) == v.size(0), "rows [count, n] and v [n]");
  const int count = static_cast<int>(rows.size(0)), n = static_cast<int>(rows.size(1));
  at::Tensor y = at::empty({count}, rows.options());
  auto* kernel = bug ? &masked_tail_kernel<true> : &masked_tail_kernel<false>;
  MINILVLM_LAUNCH(kernel, 2, kThreads, 0, 0)(rows.data_ptr<float>(), v.data_ptr<float>(), y.data_ptr<float>(),
                                             count, n);
  return y;
}

void wrong_stride(at::Tensor& p, const at::Tensor& g_, double lr, int64_t blocks, bool bug) {
  TORCH_CHECK(p.is_contiguous() && p.scalar_type() == at::kFloat, "p must be a contiguous float32 tensor");
  const at::Tensor g = f32(g_, "g");
  TORCH_CHECK(g.numel() == p.numel(), "p and g differ in size");
  auto* kernel = bug ? &wrong_stride_kernel<true> : &wrong_stride_kernel<false>;
  MINILVLM_LAUNCH(kernel, static_cast<unsigned>(blocks), kThreads, 0, 0)(p.data_ptr<float>(), g.data_ptr<float>(),
                                                                          static_cast<float>(lr), p.numel());
}

at::Tensor wrong_shuffle_offset(const at::Tensor& x_, int64_t blocks, bool bug) {
  const at::Tensor x = f32(x_, "x");
  at::Tensor partial = at::empty({blocks}, x.options());
  auto* kernel = bug ? &wrong_shuffle_offset_kernel<true> : &wrong_shuffle_offset_kernel<false>;
  MINILVLM_LAUNCH(kernel, static_cast<unsigned>(blocks), kThreads, 0, 0)(x.data_ptr<float>(),
                                                                          partial.data_ptr<float>(),
                                                                          static_cast<int>(x.numel()));
  return partial;
}

at::Tensor divergent_barrier(double a, const at::Tensor& x_, bool bug) {
  const at::Tensor x = f32(x_, "x");
  at::Tensor out = at::empty_like(x);
  auto* kernel = bug ? &divergent_barrier_kernel<true> : &divergent_barrier_kernel<false>;
  MINILVLM_LAUNCH(kernel, blocks_for(x.numel(), kThreads), kThreads, sizeof(float) * kThreads, 0)(
      static_cast<float>(a), x.data_ptr<float>(), out.data_ptr<float>(), static_cast<int>(x.numel()));
  return out;
}

at::Tensor inactive_lane_shuffle(const at::Tensor& x_, bool bug) {
  const at::Tensor x = f32(x_, "x");
  const unsigned blocks = blocks_for(x.numel(), kThreads);
  at::Tensor sums = at::zeros({static_cast<int64_t>(blocks) * kWarps}, x.options());
  auto* kernel = bug ? &inactive_lane_shuffle_kernel<true> : &inactive_lane_shuffle_kernel<false>;
  MINILVLM_LAUNCH(kernel, blocks, kThreads, 0, 0)(x.data_ptr<float>(), sums.data_ptr<float>(),
                                                  static_cast<int>(x.numel()));
  return sums;
}

at::Tensor missing_syncwarp(const at::Tensor& x_, bool bug) {
  const at::Tensor x = f32(x_, "x");
  at::Tensor out = at::empty_like(x);
  auto* kernel = bug ? &missing_syncwarp_kernel<true> : &missing_syncwarp_kernel<false>;
  MINILVLM_LAUNCH(kernel, blocks_for(x.numel(), kThreads), kThreads, 0, 0)(x.data_ptr<float>(), out.data_ptr<float>(),
                                                                           static_cast<int>(x.numel()));
  return out;
}

}  // namespace
}  // namespace planted
}  // namespace minilvlm

TORCH_LIBRARY_FRAGMENT(minilvlm_emu, m) {
  m.def("planted_missing_barrier(Tensor x, Tensor w, bool bug) -> Tensor");
  m.def("planted_masked_tail(Tensor rows, Tensor v, bool bug) -> Tensor");
  m.def("planted_wrong_stride(Tensor(a!) p, Tensor g, float lr, int blocks, bool bug) -> ()");
  m.def("planted_wrong_shuffle_offset(Tensor x, int blocks, bool bug) -> Tensor");
  m.def("planted_divergent_barrier(float a, Tensor x, bool bug) -> Tensor");
  m.def("planted_inactive_lane_shuffle(Tensor x, bool bug) -> Tensor");
  m.def("planted_missing_syncwarp(Tensor x, bool bug) -> Tensor");
}

TORCH_LIBRARY_IMPL(minilvlm_emu, CPU, m) {
  using namespace minilvlm::planted;
  m.impl("planted_missing_barrier", &missing_barrier);
  m.impl("planted_masked_tail", &masked_tail);
  m.impl("planted_wrong_stride", &wrong_stride);
  m.impl("planted_wrong_shuffle_offset", &wrong_shuffle_offset);
  m.impl("planted_divergent_barrier", &divergent_barrier);
  m.impl("planted_inactive_lane_shuffle", &inactive_lane_shuffle);
  m.impl("planted_missing_syncwarp", &missing_syncwarp);
}
