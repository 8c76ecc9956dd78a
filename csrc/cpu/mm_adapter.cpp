// mm_adapter.cpp: the CPU kernels of minilvlm::mm_adapter and minilvlm::mm_adapter_backward
// (LaVIN's MM-Adapter; the maths and the per-sample folding are described in
// common/mm_adapter_host.h and cpu/mm_adapter_tokens.h).
//
// Forward reads each token row of x once from memory and writes out once, in tiles of tokens of
// one sample: h (r dot products per token) for the tile, then out = x + cs + UsT^T h while the
// tile sits in L2. Backward reads x and dy and writes dx, in tiles of tokens of one sample; the
// parameter sums live in per-thread buffers that are added up at the end. SIMD, chosen at run time
// (cpu/capability.h; MINILVLM_CPU_CAPABILITY caps it): the bf16 forward takes bf16 dot products (cpu/mm_adapter_bf16.h) on CPUs with
// AVX512_BF16; otherwise fp32/bf16/fp16 tokens take AVX-512F fp32 arithmetic where the CPU has it;
// float64 and other CPUs take the portable loops. Dropout on h (cpu/mm_adapter_tokens.h) is
// regenerated in the backward from (seed, offset, token index): one Philox block per four entries
// of h, r/4 per token, next to the r*D multiply-adds of the token's own down-projection, so
// recomputing it is cheaper than writing and reading a stored mask.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/dispatch.h"
#include "common/mm_adapter_host.h"
#include "cpu/capability.h"
#include "cpu/mm_adapter_bf16.h"
#include "cpu/mm_adapter_tokens.h"
#include "cpu/simd.h"

namespace minilvlm {
namespace {

template <typename Acc>
mm::TokenArgs<Acc> token_args(const MmAdapterShape& s, const MmRouting& m, const DropoutKeys& dropout) {
  return {m.A.data_ptr<Acc>(), m.bA.data_ptr<Acc>(), m.UsT.data_ptr<Acc>(), m.cs.data_ptr<Acc>(),
          s.D, s.r, s.rg, s.Dg, s.groups, dropout};
}

#ifdef MINILVLM_HAVE_AVX512BF16_PATH
// The bf16 forward on bf16 dot products (cpu/mm_adapter_bf16.h), in tiles of tokens of one sample.
void forward_bf16_dot(const MmAdapterShape& s, const MmRouting& m, const DropoutKeys& dropout, const at::Tensor& x,
                      at::Tensor& out) {
  const auto a = token_args<float>(s, m, dropout);
  const mm::Bf16Operands ops = mm::pack_bf16(m.A, m.UsT, s.B, s.D, s.rg);
  const auto* xp = x.data_ptr<c10::BFloat16>();
  auto* op = out.data_ptr<c10::BFloat16>();
  const int64_t D = s.D, tile = mm::kBf16TileTokens, tiles_per_sample = (s.T + tile - 1) / tile;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(tile * D, 1));
  at::parallel_for(0, s.B * tiles_per_sample, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> h(tile * s.r);
    std::vector<uint32_t> hp(tile * s.groups * ops.rp);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t b = job / tiles_per_sample;
      const int64_t t0 = (job % tiles_per_sample) * tile, nt = std::min(tile, s.T - t0);
      const int64_t off = (b * s.T + t0) * D;
      mm::forward_tile_bf16(xp + off, op + off, nt, a, ops, b, b * s.T + t0, h.data(), hp.data());
    }
  });
}
#endif

template <typename T, typename Acc>
void forward_typed(const MmAdapterShape& s, const MmRouting& m, const DropoutKeys& dropout, const at::Tensor& x,
                   at::Tensor& out) {
  const auto a = token_args<Acc>(s, m, dropout);
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t D = s.D, tile = mm::kTileTokens, tiles_per_sample = (s.T + tile - 1) / tile;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(tile * D, 1));
  at::parallel_for(0, s.B * tiles_per_sample, grain, [&](int64_t begin, int64_t end) {
    std::vector<Acc> h(tile * s.r);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t b = job / tiles_per_sample;
      const int64_t t0 = (job % tiles_per_sample) * tile, nt = std::min(tile, s.T - t0);
      const int64_t off = (b * s.T + t0) * D;
#ifdef MINILVLM_HAVE_AVX512_PATH
      if constexpr (!std::is_same_v<Acc, double>) {
        if (avx512_enabled()) {
          mm::forward_tile_avx512(xp + off, op + off, nt, a, b, b * s.T + t0, h.data());
          continue;
        }
      }
#endif
      for (int64_t i = 0; i < nt; ++i)
        mm::forward_token_portable(xp + off + i * D, op + off + i * D, a, b, b * s.T + t0 + i, h.data());
    }
  });
}

// An output (out, or dx) of 32 MB or more (fp32 at B=4, T=512, D=4096) lies above glibc's largest mmap
// threshold, so every call gets fresh pages and faults them in 4 KB at a time: that, not the
// arithmetic, was most of the fp32 forward (x.clone() pays the same). Advising transparent huge
// pages on the 2 MB-aligned interior of the fresh allocation cuts the faults 512-fold. It is
// advice only (what torch's THP_MEM_ALLOC_ENABLE=1 does for every large tensor); if the kernel
// declines, nothing changes but the speed, so the result is not checked.
void advise_huge_pages(const at::Tensor& fresh) {
#ifdef MADV_HUGEPAGE
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (fresh.nbytes() < (uintptr_t(32) << 20)) return;
  const auto start = reinterpret_cast<uintptr_t>(fresh.data_ptr());
  const uintptr_t lo = (start + kHuge - 1) & ~(kHuge - 1), hi = (start + fresh.nbytes()) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#endif
}

at::Tensor mm_adapter_cpu(const at::Tensor& x_in, const at::Tensor& t, const at::Tensor& router_w,
                          const at::Tensor& router_b, const at::Tensor& down_w, const at::Tensor& down_b,
                          const at::Tensor& up_w, const at::Tensor& up_b, double temperature, double scale,
                          int64_t groups, double dropout, int64_t seed, int64_t offset) {
  const MmAdapterShape s = check_mm_adapter(x_in, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature, groups);
  const DropoutKeys keys = check_mm_dropout(dropout, seed, offset);
  TORCH_CHECK(x_in.device().is_cpu(), "mm_adapter (CPU kernel): tensors must be on the CPU, got ", x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x);
  if (x.numel() == 0) return out;
  advise_huge_pages(out);
  const MmRouting m = mm_route(s, x, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature, scale);
#ifdef MINILVLM_HAVE_AVX512BF16_PATH
  static const bool bf16_dot = capability() >= Capability::kAvx512Bf16;
  if (x.scalar_type() == at::kBFloat16 && bf16_dot) {
    forward_bf16_dot(s, m, keys, x, out);
    return out;
  }
#endif
  dispatch_dtype<float, c10::BFloat16, c10::Half, double>(x.scalar_type(), "mm_adapter", [&](auto tag) {
    using T = typename decltype(tag)::type;
    forward_typed<T, acc_t<T>>(s, m, keys, x, out);
  });
  return out;
}

// Tokens per backward tile: x and dy of a tile (plus the per-thread sums) should stay in L2.
int64_t tile_tokens(int64_t D) { return std::clamp<int64_t>(32768 / std::max<int64_t>(D, 1), 2, 32); }

template <typename T, typename Acc>
void backward_typed(const MmAdapterShape& s, const MmRouting& m, const DropoutKeys& dropout, const at::Tensor& x,
                    const at::Tensor& dy, at::Tensor& dx, at::Tensor& dA, at::Tensor& dbA, at::Tensor& G, at::Tensor& S) {
  const auto a = token_args<Acc>(s, m, dropout);
  const T* xp = x.data_ptr<T>();
  const T* gp = dy.data_ptr<T>();
  T* dxp = dx.data_ptr<T>();
  const int64_t D = s.D, r = s.r, rg = s.rg, B = s.B;
  const int64_t tile = tile_tokens(D), tiles_per_sample = (s.T + tile - 1) / tile;
  // Per-thread partial sums, one slot per thread of the pool, added up below.
  const int64_t threads = at::get_num_threads();
  const int64_t stride = r * D + r + B * rg * D + B * D;
  at::Tensor partial = at::zeros({threads, stride}, dA.options());
  Acc* base = partial.data_ptr<Acc>();
  at::parallel_for(0, B * tiles_per_sample, 1, [&](int64_t begin, int64_t end) {
    Acc* mine = base + at::get_thread_num() * stride;
    std::vector<Acc> h(tile * r), dh(tile * r);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t b = job / tiles_per_sample;
      const int64_t t0 = (job % tiles_per_sample) * tile, nt = std::min(tile, s.T - t0);
      const mm::Sums<Acc> sums{mine, mine + r * D, mine + r * D + r + b * rg * D, mine + r * D + r + B * rg * D + b * D};
      const int64_t off = (b * s.T + t0) * D;
#ifdef MINILVLM_HAVE_AVX512_PATH
      if constexpr (!std::is_same_v<Acc, double>) {
        if (avx512_enabled()) {
          mm::backward_tile_avx512(xp + off, gp + off, dxp + off, nt, a, b, b * s.T + t0, sums, h.data(), dh.data());
          continue;
        }
      }
#endif
      for (int64_t i = 0; i < nt; ++i)
        mm::backward_token_portable(xp + off + i * D, gp + off + i * D, dxp + off + i * D, a, b, b * s.T + t0 + i,
                                    sums, h.data(), dh.data());
    }
  });
  const at::Tensor total = partial.sum(0);
  dA.copy_(total.narrow(0, 0, r * D).view({r, D}));
  dbA.copy_(total.narrow(0, r * D, r));
  G.copy_(total.narrow(0, r * D + r, B * rg * D).view({B, rg * D}));
  S.copy_(total.narrow(0, r * D + r + B * rg * D, B * D).view({B, D}));
}

MmAdapterGrads mm_adapter_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x_in, const at::Tensor& t,
                                       const at::Tensor& router_w, const at::Tensor& router_b,
                                       const at::Tensor& down_w, const at::Tensor& down_b, const at::Tensor& up_w,
                                       const at::Tensor& up_b, double temperature, double scale, int64_t groups,
                                       double dropout, int64_t seed, int64_t offset) {
  const MmAdapterShape s =
      check_mm_adapter_backward(grad_out, x_in, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature, groups);
  const DropoutKeys keys = check_mm_dropout(dropout, seed, offset);
  TORCH_CHECK(x_in.device().is_cpu(), "mm_adapter_backward (CPU kernel): tensors must be on the CPU, got ",
              x_in.device());
  const at::Tensor x = x_in.contiguous(), dy = grad_out.contiguous();
  const MmRouting m = mm_route(s, x, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature, scale);
  const auto acc = m.A.options();
  at::Tensor dx = at::empty_like(x);
  advise_huge_pages(dx);
  at::Tensor dA = at::zeros({s.r, s.D}, acc), dbA = at::zeros({s.r}, acc);
  at::Tensor G = at::zeros({s.B, s.rg * s.D}, acc), S = at::zeros({s.B, s.D}, acc);
  if (x.numel() > 0) {
    dispatch_dtype<float, c10::BFloat16, c10::Half, double>(x.scalar_type(), "mm_adapter_backward", [&](auto tag) {
      using T = typename decltype(tag)::type;
      backward_typed<T, acc_t<T>>(s, m, keys, x, dy, dx, dA, dbA, G, S);
    });
  }
  auto [dt, drw, drb, ddw, ddb, duw, dub] =
      mm_finalize(s, m, dA, dbA, G, S, temperature, scale, t, router_w, router_b, down_w, down_b, up_w, up_b);
  return {dx, dt, drw, drb, ddw, ddb, duw, dub};
}

}  // namespace

TORCH_LIBRARY_IMPL(minilvlm, CPU, m) {
  m.impl("mm_adapter", &mm_adapter_cpu);
  m.impl("mm_adapter_backward", &mm_adapter_backward_cpu);
}

}  // namespace minilvlm
