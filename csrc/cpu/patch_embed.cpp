// patch_embed.cpp: the CPU kernel of minilvlm::patch_embed and patch_embed_backward.
//
// Forward = three passes (the order of work is common/patch_embed_host.h's):
//   1. pixels (uint8 or float32, NCHW or NHWC) -> normalized patch rows [B*T, K] in the weight's
//      dtype, at::parallel_for over rows; the inner loops are plain loops GCC auto-vectorises
//      (bf16 rounding is written as integer operations for that reason);
//   2. one GEMM rows @ W^T straight into the output (at::mm_out: MKL/oneDNN in fp32, oneDNN's
//      bf16 GEMM with fp32 accumulation for bf16 weights);
//   3. one pass over the output adding bias and pos_embed and writing the class-token rows.
// The pixel pass reads B*C*H*W pixels and writes B*T*K row elements, about as many; both are
// small next to the GEMM (2*B*N*K*D flops), so the op runs at close to the GEMM's speed.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "common/dispatch.h"
#include "common/patch_embed_host.h"
#include "cpu/capability.h"
#include "cpu/simd.h"

namespace minilvlm {

namespace {

// Each parallel task gets at least this many elements (some 50-100 us of work): below it a pass
// runs on one thread, since waking a second one costs more than it saves, and far more when the
// cores are shared with other processes (a descheduled OpenMP thread stalls the whole region).
constexpr int64_t kMinTaskElements = 1 << 17;

// ---------------------------------------------------------------------------------------
// element conversions (Acc is float for float32/bf16/fp16, double for float64)

template <typename Acc>
inline Acc widen(uint8_t x) { return static_cast<Acc>(x); }
template <typename Acc>
inline Acc widen(float x) { return static_cast<Acc>(x); }
template <typename Acc>
inline Acc widen(double x) { return static_cast<Acc>(x); }
template <typename Acc>
inline Acc widen(c10::Half x) { return static_cast<Acc>(static_cast<float>(x)); }
template <typename Acc>
inline Acc widen(c10::BFloat16 x) {
  const uint32_t bits = static_cast<uint32_t>(x.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return static_cast<Acc>(f);
}

template <typename Out>
inline Out narrow(float x) { return static_cast<Out>(x); }
template <typename Out>
inline Out narrow(double x) { return static_cast<Out>(x); }
// Round to nearest even (c10::Half's own conversion; fp16 is rare on the CPU, so it is not
// hand-vectorised like bf16 below).
template <>
inline c10::Half narrow<c10::Half>(float x) { return static_cast<c10::Half>(x); }
// Round to nearest even, NaN to 0x7fc0: the bits of c10::BFloat16(float), as branch-free
// integer code that vectorises.
template <>
inline c10::BFloat16 narrow<c10::BFloat16>(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  return c10::BFloat16(static_cast<uint16_t>(x != x ? 0x7fc0u : rounded), c10::BFloat16::from_bits());
}

// ---------------------------------------------------------------------------------------
// the vector loops: each is written once (always_inline) and compiled twice, for the baseline
// ISA and for AVX-512 (cpu/simd.h); one is chosen at run time (cpu/capability.h, so
// MINILVLM_CPU_CAPABILITY caps it too).

// dst[i] = (src[i] * scale[i] + shift[i]) in Out: one image row, scale/shift laid out like it.
template <typename Pix, typename Out, typename Acc>
__attribute__((always_inline)) inline void normalize_loop(const Pix* src, Out* dst, int64_t n, const Acc* scale,
                                                          const Acc* shift) {
  for (int64_t i = 0; i < n; ++i) dst[i] = narrow<Out>(widen<Acc>(src[i]) * scale[i] + shift[i]);
}

// One output row: y = (y + bias) + pos, the reference's order; bias or pos may be null.
template <typename Out, typename Acc, bool kBias, bool kPos>
__attribute__((always_inline)) inline void epilogue_loop(Out* y, const Out* bias, const Out* pos, int64_t n) {
  for (int64_t d = 0; d < n; ++d) {
    Acc v = widen<Acc>(y[d]);
    if constexpr (kBias) v += widen<Acc>(bias[d]);
    if constexpr (kPos) v += widen<Acc>(pos[d]);
    y[d] = narrow<Out>(v);
  }
}

// acc[d] += x[d] (or = when first): the batch reduction of the backward.
template <typename In, typename Acc>
__attribute__((always_inline)) inline void accumulate_loop(Acc* acc, const In* x, int64_t n, bool first) {
  if (first)
    for (int64_t d = 0; d < n; ++d) acc[d] = widen<Acc>(x[d]);
  else
    for (int64_t d = 0; d < n; ++d) acc[d] += widen<Acc>(x[d]);
}

// One NCHW pixel row of one channel cut into its `pieces` patch pieces of p pixels, piece px going
// to dst + px * K (its place in patch row px): normalized into a scratch row, then copied piece by
// piece. scale/shift are the row's (one channel: the same value throughout).
template <typename Pix, typename Out, typename Acc>
__attribute__((always_inline)) inline void row_pieces_loop(const Pix* src, Out* dst, int64_t pieces, int64_t p,
                                                           int64_t K, const Acc* scale, const Acc* shift,
                                                           Out* scratch) {
  normalize_loop(src, scratch, pieces * p, scale, shift);
  for (int64_t px = 0; px < pieces; ++px) std::memcpy(dst + px * K, scratch + px * p, p * sizeof(Out));
}

template <typename Pix, typename Out, typename Acc>
void normalize_default(const Pix* src, Out* dst, int64_t n, const Acc* scale, const Acc* shift) {
  normalize_loop(src, dst, n, scale, shift);
}
template <typename Pix, typename Out, typename Acc>
void row_pieces_default(const Pix* src, Out* dst, int64_t pieces, int64_t p, int64_t K, const Acc* scale,
                        const Acc* shift, Out* scratch) {
  row_pieces_loop(src, dst, pieces, p, K, scale, shift, scratch);
}
template <typename Out, typename Acc, bool kBias, bool kPos>
void epilogue_default(Out* y, const Out* bias, const Out* pos, int64_t n) {
  epilogue_loop<Out, Acc, kBias, kPos>(y, bias, pos, n);
}
template <typename In, typename Acc>
void accumulate_default(Acc* acc, const In* x, int64_t n, bool first) {
  accumulate_loop(acc, x, n, first);
}

#ifdef MINILVLM_HAVE_AVX512_PATH
template <typename Pix, typename Out, typename Acc>
MINILVLM_AVX512 void normalize_avx512(const Pix* src, Out* dst, int64_t n, const Acc* scale, const Acc* shift) {
  normalize_loop(src, dst, n, scale, shift);
}
template <typename Out, typename Acc, bool kBias, bool kPos>
MINILVLM_AVX512 void epilogue_avx512(Out* y, const Out* bias, const Out* pos, int64_t n) {
  epilogue_loop<Out, Acc, kBias, kPos>(y, bias, pos, n);
}
template <typename In, typename Acc>
MINILVLM_AVX512 void accumulate_avx512(Acc* acc, const In* x, int64_t n, bool first) {
  accumulate_loop(acc, x, n, first);
}
MINILVLM_AVX512_BEGIN
inline __m512 load_pixels16(const uint8_t* p, __mmask16 k) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, p)));
}
inline __m512 load_pixels16(const float* p, __mmask16 k) { return _mm512_maskz_loadu_ps(k, p); }
// Pieces of up to 16 pixels (p <= 16: ViT-L/14, ViT-B/16, SigLIP's 14 and 16) each in one masked
// load and store straight into the patch row. The scratch row and the per-piece memcpy calls (16 per
// pixel row at ViT-L/14, 28 bytes each in bf16) made the pixel pass 0.38 ms of the op's 1.4 ms
// forward in bf16 on the AMX Xeon. x * scale + shift is a multiply and an add, two roundings, as
// the loop above (built with -ffp-contract=off) and the reference compute it.
template <typename Pix, typename Out, typename Acc>
void row_pieces_avx512(const Pix* src, Out* dst, int64_t pieces, int64_t p, int64_t K, const Acc* scale,
                       const Acc* shift, Out* scratch) {
  if constexpr (std::is_same_v<Acc, float> && !std::is_same_v<Out, double>) {
    if (p <= 16) {
      const __mmask16 k = lanes(p);
      const __m512 mul = _mm512_set1_ps(scale[0]), add = _mm512_set1_ps(shift[0]);
      for (int64_t px = 0; px < pieces; ++px)
        store16(dst + px * K, _mm512_add_ps(_mm512_mul_ps(load_pixels16(src + px * p, k), mul), add), k);
      return;
    }
  }
  row_pieces_loop(src, dst, pieces, p, K, scale, shift, scratch);
}
MINILVLM_AVX512_END
#define MINILVLM_PE_PICK(name, ...) (avx512_enabled() ? &name##_avx512<__VA_ARGS__> : &name##_default<__VA_ARGS__>)
#else
#define MINILVLM_PE_PICK(name, ...) (&name##_default<__VA_ARGS__>)
#endif

// ---------------------------------------------------------------------------------------
// pass 1: pixels -> normalized patch rows
//
// Work unit: one strip of patches (image b, patch row py). For each of its p pixel rows, the
// whole image row (W pixels, or W*C interleaved for NHWC) is normalized in one vector loop into
// a scratch row, which is then cut into the p-wide pieces of the strip's patch rows.

template <typename Pix, typename Out, typename Acc>
void make_rows_typed(const Pix* pixels, Out* rows, const PatchGeometry& g, const PatchNormHost& norm) {
  const int64_t p = g.patch, K = g.row_len, C = g.channels, W = g.width, Wp = g.grid_w;
  const int64_t strips = g.height / p;
  const int64_t run = W * C;  // one pixel row of all channels
  // scale/shift laid out like a pixel row: NCHW channel c at [c*W, (c+1)*W), NHWC interleaved.
  std::vector<Acc> scale(run), shift(run);
  for (int64_t i = 0; i < run; ++i) {
    const int64_t c = g.channels_last ? i % C : i / W;
    scale[i] = static_cast<Acc>(norm.scale[c]);
    shift[i] = static_cast<Acc>(norm.shift[c]);
  }
  auto* normalize = MINILVLM_PE_PICK(normalize, Pix, Out, Acc);
  auto* row_pieces = MINILVLM_PE_PICK(row_pieces, Pix, Out, Acc);
  const int64_t grain = std::max<int64_t>(1, kMinTaskElements / std::max<int64_t>(run * p, 1));
  at::parallel_for(0, g.batch * strips, grain, [&](int64_t s0, int64_t s1) {
    std::vector<Out> scratch(run);
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t b = s / strips, py = s % strips;
      Out* first_row = rows + (b * g.tokens + (g.has_cls ? 1 : 0) + py * Wp) * K;  // patch (py, 0)
      if (g.has_cls && py == 0) {  // the class token's row: zeros, so the GEMM writes 0 there
        Out* cls_row = rows + b * g.tokens * K;
        std::fill(cls_row, cls_row + K, narrow<Out>(Acc(0)));
      }
      for (int64_t ky = 0; ky < p; ++ky) {
        const int64_t y = py * p + ky;
        if (!g.channels_last) {
          for (int64_t c = 0; c < C; ++c)  // Conv2d weight order (c, ky, kx)
            row_pieces(pixels + g.pixel_offset(b, c, y, 0), first_row + (c * p + ky) * p, Wp, p, K,
                       scale.data() + c * W, shift.data() + c * W, scratch.data());
        } else {
          normalize(pixels + g.pixel_offset(b, 0, y, 0), scratch.data(), run, scale.data(), shift.data());
          for (int64_t px = 0; px < Wp; ++px) {
            const Out* src = scratch.data() + px * p * C;
            Out* dst = first_row + px * K + ky * p;
            for (int64_t c = 0; c < C; ++c)
              for (int64_t kx = 0; kx < p; ++kx) dst[c * p * p + kx] = src[kx * C + c];
          }
        }
      }
    }
  });
}

void make_rows(const at::Tensor& pixels, const at::Tensor& rows, const PatchGeometry& g, const PatchNormHost& norm) {
  dispatch_dtype<float, c10::BFloat16, c10::Half, double>(rows.scalar_type(), "patch_embed", [&](auto out_tag) {
    using Out = typename decltype(out_tag)::type;
    dispatch_dtype<uint8_t, float>(pixels.scalar_type(), "patch_embed", [&](auto pixel_tag) {
      using Pix = typename decltype(pixel_tag)::type;
      make_rows_typed<Pix, Out, acc_t<Out>>(pixels.data_ptr<Pix>(), rows.data_ptr<Out>(), g, norm);
    });
  });
}

// ---------------------------------------------------------------------------------------
// pass 3: the epilogue, in place over the GEMM's output

template <typename Out, typename Acc, bool kBias, bool kPos>
void epilogue_typed(Out* out, const Out* bias, const Out* pos, const Out* cls, const PatchGeometry& g) {
  const int64_t D = g.dim;
  auto* row_op = MINILVLM_PE_PICK(epilogue, Out, Acc, kBias, kPos);
  const int64_t grain = std::max<int64_t>(1, kMinTaskElements / std::max<int64_t>(D, 1));
  at::parallel_for(0, g.batch * g.tokens, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      Out* y = out + r * D;
      const int64_t t = r % g.tokens;
      if (g.has_cls && t == 0) {  // class token: cls + pos[0]; the GEMM wrote zeros here
        for (int64_t d = 0; d < D; ++d) y[d] = narrow<Out>(widen<Acc>(cls[d]) + (kPos ? widen<Acc>(pos[d]) : Acc(0)));
        continue;
      }
      if constexpr (kBias || kPos) row_op(y, bias, kPos ? pos + t * D : nullptr, D);
    }
  });
}
template <typename Out, typename Acc>
void epilogue_out(const at::Tensor& out, const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos,
                  const std::optional<at::Tensor>& cls, const PatchGeometry& g) {
  const Out* b = bias.has_value() ? bias->data_ptr<Out>() : nullptr;
  const Out* p = pos.has_value() ? pos->data_ptr<Out>() : nullptr;
  const Out* c = cls.has_value() ? cls->data_ptr<Out>() : nullptr;
  Out* y = out.data_ptr<Out>();
  if (b && p) return epilogue_typed<Out, Acc, true, true>(y, b, p, c, g);
  if (b) return epilogue_typed<Out, Acc, true, false>(y, b, p, c, g);
  if (p) return epilogue_typed<Out, Acc, false, true>(y, b, p, c, g);
  if (c) return epilogue_typed<Out, Acc, false, false>(y, b, p, c, g);  // only the class-token rows change
}

void epilogue(const at::Tensor& out, const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos,
              const std::optional<at::Tensor>& cls, const PatchGeometry& g) {
  dispatch_dtype<float, c10::BFloat16, c10::Half, double>(out.scalar_type(), "patch_embed", [&](auto tag) {
    using Out = typename decltype(tag)::type;
    epilogue_out<Out, acc_t<Out>>(out, bias, pos, cls, g);
  });
}

// ---------------------------------------------------------------------------------------
// backward: grad [B, T, D] summed over the batch into [T, D] in Acc, parallel over token rows

template <typename In, typename Acc>
void sum_batch_typed(const In* grad, Acc* out, int64_t batch, int64_t tokens, int64_t dim) {
  auto* accumulate = MINILVLM_PE_PICK(accumulate, In, Acc);
  const int64_t grain = std::max<int64_t>(1, kMinTaskElements / std::max<int64_t>(dim * batch, 1));
  at::parallel_for(0, tokens, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t b = 0; b < batch; ++b) accumulate(out + t * dim, grad + (b * tokens + t) * dim, dim, b == 0);
  });
}

at::Tensor sum_batch(const at::Tensor& grad_in, at::ScalarType acc) {
  const at::Tensor grad = grad_in.contiguous();
  const int64_t batch = grad.size(0), tokens = grad.size(1), dim = grad.size(2);
  if (batch == 0) return at::zeros({tokens, dim}, grad.options().dtype(acc));
  at::Tensor out = at::empty({tokens, dim}, grad.options().dtype(acc));  // b == 0 assigns every element
  if (out.numel() == 0) return out;
  dispatch_dtype<float, c10::BFloat16, c10::Half, double>(grad.scalar_type(), "patch_embed_backward", [&](auto tag) {
    using In = typename decltype(tag)::type;
    sum_batch_typed<In, acc_t<In>>(grad.data_ptr<In>(), out.data_ptr<acc_t<In>>(), batch, tokens, dim);
  });
  return out;
}

// ---------------------------------------------------------------------------------------
// the ops

at::Tensor patch_embed_cpu(const at::Tensor& pixels, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& pos, const std::optional<at::Tensor>& cls,
                           int64_t patch_size, std::optional<at::ArrayRef<double>> mean,
                           std::optional<at::ArrayRef<double>> std, bool channels_last) {
  const PatchGeometry g = plan_patch_embed(pixels, weight, bias, pos, cls, patch_size, channels_last);
  TORCH_CHECK(pixels.device().is_cpu(), "patch_embed (CPU kernel): tensors must be on the CPU, got ",
              pixels.device());
  const PatchNormHost norm = plan_patch_norm(g.channels, pixels.scalar_type() == at::kByte, mean, std, "patch_embed");
  return run_patch_embed_passes(
      g, pixels, weight, bias, pos, cls,
      [&](const at::Tensor& px, const at::Tensor& rows) { make_rows(px, rows, g, norm); },
      [&](const at::Tensor& out, const std::optional<at::Tensor>& b, const std::optional<at::Tensor>& p,
          const std::optional<at::Tensor>& c) { epilogue(out, b, p, c, g); });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_embed_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& pixels, const at::Tensor& weight, int64_t patch_size,
    std::optional<at::ArrayRef<double>> mean, std::optional<at::ArrayRef<double>> std, bool channels_last,
    bool has_cls) {
  const PatchGeometry g = plan_patch_embed_backward(grad_out, pixels, weight, patch_size, channels_last, has_cls);
  TORCH_CHECK(pixels.device().is_cpu(), "patch_embed_backward (CPU kernel): tensors must be on the CPU, got ",
              pixels.device());
  const PatchNormHost norm =
      plan_patch_norm(g.channels, pixels.scalar_type() == at::kByte, mean, std, "patch_embed_backward");
  return run_patch_embed_backward_passes(
      g, grad_out, pixels, weight, [&](const at::Tensor& px, const at::Tensor& rows) { make_rows(px, rows, g, norm); },
      sum_batch);
}

}  // namespace

TORCH_LIBRARY_IMPL(minilvlm, CPU, m) {
  m.impl("patch_embed", &patch_embed_cpu);
  m.impl("patch_embed_backward", &patch_embed_backward_cpu);
}

}  // namespace minilvlm
