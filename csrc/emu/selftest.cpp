// selftest.cpp: torch ops (CPU tensors in, CPU tensors out) that launch the emulator's own test
// kernels (selftest_kernels.cuh) through the SIMT emulator. Used by tests/test_emu.py.
// Torch headers first: the emulator header defines CUDA names (threadIdx, min/max, assert, ...)
// that should not leak into them.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "emu/selftest_kernels.cuh"

namespace minilvlm {
namespace emu_selftest {
namespace {

at::Tensor contiguous_f32(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), what, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat, what, " must be float32, got ", t.scalar_type());
  return t.contiguous();
}

int checked_int(int64_t v, const char* what) {
  TORCH_CHECK(v >= 0 && v <= INT32_MAX, what, " out of range: ", v);
  return static_cast<int>(v);
}

at::Tensor block_sum(const at::Tensor& x_, int64_t block, int64_t grid) {
  at::Tensor x = contiguous_f32(x_, "x");
  TORCH_CHECK(block >= 32 && block <= 1024 && (block & (block - 1)) == 0,
              "block must be a power of two in [32, 1024], got ", block);
  TORCH_CHECK(grid >= 1, "grid must be >= 1");
  at::Tensor partial = at::empty({grid}, x.options());
  const int n = checked_int(x.numel(), "numel");
  MINILVLM_LAUNCH(block_sum_kernel, dim3(static_cast<unsigned>(grid)), dim3(static_cast<unsigned>(block)), 0, 0)
  (x.data_ptr<float>(), partial.data_ptr<float>(), n);
  return partial;
}

std::tuple<at::Tensor, at::Tensor> warp_ops(const at::Tensor& x_) {
  at::Tensor x = contiguous_f32(x_, "x");
  const int n = checked_int(x.numel(), "numel");
  const int block = 128;
  const int grid = std::max(1, (n + block - 1) / block);
  const int64_t padded = static_cast<int64_t>(grid) * block;
  at::Tensor fout = at::empty({padded, 7}, x.options());
  at::Tensor iout = at::empty({padded, 3}, x.options().dtype(at::kLong));
  MINILVLM_LAUNCH(warp_ops_kernel, grid, block, 0, 0)
  (x.data_ptr<float>(), fout.data_ptr<float>(), reinterpret_cast<long long*>(iout.data_ptr<int64_t>()), n);
  return {fout, iout};
}

at::Tensor transpose(const at::Tensor& x_) {
  at::Tensor x = contiguous_f32(x_, "x");
  TORCH_CHECK(x.dim() == 2, "x must be 2-D");
  const int rows = checked_int(x.size(0), "rows"), cols = checked_int(x.size(1), "cols");
  at::Tensor out = at::empty({cols, rows}, x.options());
  if (x.numel() == 0) return out;
  dim3 grid((cols + kTile - 1) / kTile, (rows + kTile - 1) / kTile);
  dim3 block(kTile, kTileRows);
  MINILVLM_LAUNCH(transpose_kernel, grid, block, 0, 0)(x.data_ptr<float>(), out.data_ptr<float>(), rows, cols);
  return out;
}

at::Tensor saxpy(double a, const at::Tensor& x_, const at::Tensor& y_, int64_t grid, int64_t block) {
  at::Tensor x = contiguous_f32(x_, "x"), y = contiguous_f32(y_, "y");
  TORCH_CHECK(x.numel() == y.numel(), "x and y differ in size");
  at::Tensor out = at::empty_like(y);
  const int n = checked_int(x.numel(), "numel");
  auto* kernel = &saxpy_kernel<float>;
  MINILVLM_LAUNCH(kernel, grid, block, static_cast<size_t>(block) * sizeof(float), 0)
  (static_cast<float>(a), x.data_ptr<float>(), y.data_ptr<float>(), out.data_ptr<float>(), n);
  return out;
}

at::Tensor histogram(const at::Tensor& x_, int64_t bins, int64_t grid, int64_t block, at::Tensor& counts,
                     at::Tensor& sums, at::Tensor& maxes) {
  at::Tensor x = contiguous_f32(x_, "x");
  TORCH_CHECK(bins >= 1 && bins <= 4096, "bins out of range");
  TORCH_CHECK(counts.scalar_type() == at::kInt && counts.numel() == bins && counts.is_contiguous(), "counts");
  TORCH_CHECK(sums.scalar_type() == at::kFloat && sums.numel() == bins && sums.is_contiguous(), "sums");
  TORCH_CHECK(maxes.scalar_type() == at::kFloat && maxes.numel() == 1, "maxes");
  at::Tensor imax = at::full({1}, -1, x.options().dtype(at::kInt));
  at::Tensor total = at::zeros({1}, x.options().dtype(at::kLong));
  const int n = checked_int(x.numel(), "numel");
  MINILVLM_LAUNCH(histogram_kernel, grid, block, static_cast<size_t>(bins) * sizeof(int), 0)
  (x.data_ptr<float>(), n, static_cast<int>(bins), counts.data_ptr<int>(), sums.data_ptr<float>(),
   maxes.data_ptr<float>(), imax.data_ptr<int>(), reinterpret_cast<unsigned long long*>(total.data_ptr<int64_t>()));
  return at::cat({imax.to(at::kLong), total});
}

at::Tensor half_roundtrip(const at::Tensor& x_) {
  at::Tensor x = contiguous_f32(x_, "x");
  const int n = checked_int(x.numel(), "numel");
  at::Tensor out = at::empty({4, x.numel()}, x.options());
  MINILVLM_LAUNCH(half_roundtrip_kernel, 3, 64, 0, 0)(x.data_ptr<float>(), out.data_ptr<float>(), n);
  return out;
}

// Ops without tensor inputs are registered as catch-all kernels.
at::Tensor divergent_sync(int64_t mode, int64_t blocks, int64_t threads) {
  at::Tensor out = at::zeros({blocks * threads}, at::TensorOptions().dtype(at::kInt));
  MINILVLM_LAUNCH(divergent_sync_kernel, blocks, threads, 0, 0)(out.data_ptr<int>(), static_cast<int>(mode));
  return out;
}

at::Tensor smem_race(int64_t blocks, int64_t threads) {
  at::Tensor out = at::zeros({blocks * threads}, at::TensorOptions().dtype(at::kInt));
  MINILVLM_LAUNCH(smem_race_kernel, blocks, threads, 0, 0)(out.data_ptr<int>());
  return out;
}

at::Tensor device_assert(int64_t blocks, int64_t threads) {
  at::Tensor out = at::zeros({blocks * threads}, at::TensorOptions().dtype(at::kInt));
  MINILVLM_LAUNCH(assert_kernel, blocks, threads, 0, 0)(out.data_ptr<int>());
  return out;
}

// A launch with the given configuration of a trivial kernel (for the launch validation tests).
void bad_launch(int64_t gx, int64_t bx, int64_t by, int64_t smem) {
  at::Tensor out = at::zeros({std::max<int64_t>(1, gx * bx * by)}, at::TensorOptions().dtype(at::kInt));
  auto* k = &iota_kernel;  // launched through a function pointer, as templates are
  MINILVLM_LAUNCH(k, dim3(static_cast<unsigned>(gx)), dim3(static_cast<unsigned>(bx), static_cast<unsigned>(by)),
                  static_cast<size_t>(smem), 0)
  (out.data_ptr<int>());
}

}  // namespace
}  // namespace emu_selftest
}  // namespace minilvlm

TORCH_LIBRARY_FRAGMENT(minilvlm_emu, m) {
  using namespace minilvlm::emu_selftest;
  m.def("selftest_block_sum(Tensor x, int block, int grid) -> Tensor");
  m.def("selftest_warp_ops(Tensor x) -> (Tensor, Tensor)");
  m.def("selftest_transpose(Tensor x) -> Tensor");
  m.def("selftest_saxpy(float a, Tensor x, Tensor y, int grid, int block) -> Tensor");
  m.def("selftest_histogram(Tensor x, int bins, int grid, int block, Tensor(a!) counts, Tensor(b!) sums, "
        "Tensor(c!) maxes) -> Tensor");
  m.def("selftest_half_roundtrip(Tensor x) -> Tensor");
  m.def("selftest_divergent_sync(int mode, int blocks, int threads) -> Tensor", &divergent_sync);
  m.def("selftest_smem_race(int blocks, int threads) -> Tensor", &smem_race);
  m.def("selftest_device_assert(int blocks, int threads) -> Tensor", &device_assert);
  m.def("selftest_bad_launch(int gx, int bx, int by, int smem) -> ()", &bad_launch);
}

TORCH_LIBRARY_IMPL(minilvlm_emu, CPU, m) {
  using namespace minilvlm::emu_selftest;
  m.impl("selftest_block_sum", &block_sum);
  m.impl("selftest_warp_ops", &warp_ops);
  m.impl("selftest_transpose", &transpose);
  m.impl("selftest_saxpy", &saxpy);
  m.impl("selftest_histogram", &histogram);
  m.impl("selftest_half_roundtrip", &half_roundtrip);
}
