// patch_embed.cpp: the CPU kernel of minilvlm::patch_embed and patch_embed_backward.
//
// Forward = three passes (common/patch_embed_driver.h):
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

#include "common/patch_embed_driver.h"
#include "common/patch_embed_host.h"

namespace minilvlm {
namespace {

// ---------------------------------------------------------------------------------------
// element conversions (Acc is float for float32/bf16, double for float64)

template <typename Acc>
inline Acc widen(uint8_t x) { return static_cast<Acc>(x); }
template <typename Acc>
inline Acc widen(float x) { return static_cast<Acc>(x); }
template <typename Acc>
inline Acc widen(double x) { return static_cast<Acc>(x); }
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
// pass 1: pixels -> normalized patch rows

template <typename Pix, typename Out, typename Acc>
void make_rows_typed(const Pix* pixels, Out* rows, const PatchGeometry& g, const PatchNormHost& norm) {
  const int64_t p = g.patch, K = g.row_len, C = g.channels;
  const int64_t step = g.channels_last ? C : 1;  // distance between horizontally adjacent pixels
  std::vector<Acc> scale(norm.scale.begin(), norm.scale.end()), shift(norm.shift.begin(), norm.shift.end());
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1));
  at::parallel_for(0, g.batch * g.tokens, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      Out* dst = rows + r * K;
      const int64_t b = r / g.tokens, t = r % g.tokens;
      if (g.has_cls && t == 0) {  // the class token's row: zeros, so the GEMM leaves 0 there
        std::fill(dst, dst + K, narrow<Out>(Acc(0)));
        continue;
      }
      const int64_t n = t - (g.has_cls ? 1 : 0);
      const int64_t y0 = n / g.grid_w * p, x0 = n % g.grid_w * p;
      for (int64_t c = 0; c < C; ++c) {
        const Acc a = scale[c], s = shift[c];
        for (int64_t ky = 0; ky < p; ++ky) {
          const Pix* src = pixels + g.pixel_offset(b, c, y0 + ky, x0);
          Out* d = dst + (c * p + ky) * p;  // Conv2d weight order (c, ky, kx)
          if (step == 1) {
            for (int64_t kx = 0; kx < p; ++kx) d[kx] = narrow<Out>(widen<Acc>(src[kx]) * a + s);
          } else {
            for (int64_t kx = 0; kx < p; ++kx) d[kx] = narrow<Out>(widen<Acc>(src[kx * step]) * a + s);
          }
        }
      }
    }
  });
}

template <typename Out, typename Acc>
void make_rows_out(const at::Tensor& pixels, const at::Tensor& rows, const PatchGeometry& g,
                   const PatchNormHost& norm) {
  Out* dst = rows.data_ptr<Out>();
  if (pixels.scalar_type() == at::kByte)
    make_rows_typed<uint8_t, Out, Acc>(pixels.data_ptr<uint8_t>(), dst, g, norm);
  else
    make_rows_typed<float, Out, Acc>(pixels.data_ptr<float>(), dst, g, norm);
}

void make_rows(const at::Tensor& pixels, const at::Tensor& rows, const PatchGeometry& g, const PatchNormHost& norm) {
  switch (rows.scalar_type()) {
    case at::kFloat: return make_rows_out<float, float>(pixels, rows, g, norm);
    case at::kBFloat16: return make_rows_out<c10::BFloat16, float>(pixels, rows, g, norm);
    case at::kDouble: return make_rows_out<double, double>(pixels, rows, g, norm);
    default: TORCH_CHECK(false, "patch_embed: unsupported dtype ", rows.scalar_type());
  }
}

// ---------------------------------------------------------------------------------------
// pass 3: the epilogue, in place over the GEMM's output

template <typename Out, typename Acc, bool kBias, bool kPos>
void epilogue_typed(Out* out, const Out* bias, const Out* pos, const Out* cls, const PatchGeometry& g) {
  const int64_t D = g.dim;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1));
  at::parallel_for(0, g.batch * g.tokens, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      Out* y = out + r * D;
      const int64_t t = r % g.tokens;
      if (g.has_cls && t == 0) {  // class token: cls + pos[0]; the GEMM wrote zeros here
        for (int64_t d = 0; d < D; ++d) y[d] = narrow<Out>(widen<Acc>(cls[d]) + (kPos ? widen<Acc>(pos[d]) : Acc(0)));
        continue;
      }
      const Out* pr = kPos ? pos + t * D : nullptr;
      for (int64_t d = 0; d < D; ++d) {
        Acc v = widen<Acc>(y[d]);
        if constexpr (kBias) v += widen<Acc>(bias[d]);  // (x @ W^T + b) + pos, the reference's order
        if constexpr (kPos) v += widen<Acc>(pr[d]);
        y[d] = narrow<Out>(v);
      }
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
  switch (out.scalar_type()) {
    case at::kFloat: return epilogue_out<float, float>(out, bias, pos, cls, g);
    case at::kBFloat16: return epilogue_out<c10::BFloat16, float>(out, bias, pos, cls, g);
    case at::kDouble: return epilogue_out<double, double>(out, bias, pos, cls, g);
    default: TORCH_CHECK(false, "patch_embed: unsupported dtype ", out.scalar_type());
  }
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
  return run_patch_embed(
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
  return run_patch_embed_backward(g, grad_out, pixels, weight,
                                  [&](const at::Tensor& px, const at::Tensor& rows) { make_rows(px, rows, g, norm); });
}

}  // namespace

TORCH_LIBRARY_IMPL(minilvlm, CPU, m) {
  m.impl("patch_embed", &patch_embed_cpu);
  m.impl("patch_embed_backward", &patch_embed_backward_cpu);
}

}  // namespace minilvlm
