// mm_adapter_run.h: the host side of the CUDA kernels of mm_adapter (csrc/cuda/mm_adapter_kernels.cuh),
// shared by the real CUDA registration (csrc/cuda/mm_adapter.cu) and the emulator build
// (csrc/emu/mm_adapter_emu.cpp): checks, the per-sample routing and the gradient finalisation
// (ATen ops on the tensors' device), the workspace, and the launches. Include it after the kernel
// header; `stream` is the CUDA stream (ignored by the emulator).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include <tuple>

#include "common/mm_adapter_host.h"

namespace minilvlm {

using MmGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                           at::Tensor>;

inline cuda::mm::MmDims mm_cuda_dims(const MmAdapterShape& s, const char* op) {
  TORCH_CHECK(s.B <= 65535, op, ": the CUDA kernel takes at most 65535 samples per call, got ", s.B);
  return {s.T, s.D, static_cast<int>(s.r), static_cast<int>(s.rg), static_cast<int>(s.Dg), static_cast<int>(s.groups)};
}

inline void mm_cuda_check_dtype(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, op,
              " (CUDA kernel): x must be float32 or bfloat16, got ", x.scalar_type(),
              "; minilvlm.ops.mm_adapter runs the reference for other dtypes");
}

template <typename DeviceT, typename ScalarT>
at::Tensor mm_cuda_forward(const at::Tensor& x_in, const at::Tensor& t, const at::Tensor& router_w,
                           const at::Tensor& router_b, const at::Tensor& down_w, const at::Tensor& down_b,
                           const at::Tensor& up_w, const at::Tensor& up_b, double temperature, double scale,
                           int64_t groups, const MmAdapterShape& s, cudaStream_t stream) {
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x);
  if (x.numel() == 0) return out;
  const MmRouting m = mm_route(s, x, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature, scale);
  cuda::mm::launch_mm_adapter_forward<DeviceT>(
      reinterpret_cast<const DeviceT*>(x.data_ptr<ScalarT>()), reinterpret_cast<DeviceT*>(out.data_ptr<ScalarT>()),
      m.A.data_ptr<float>(), m.bA.data_ptr<float>(), m.UsT.data_ptr<float>(), m.cs.data_ptr<float>(), s.B,
      mm_cuda_dims(s, "mm_adapter"), stream);
  return out;
}

template <typename DeviceT, typename ScalarT>
MmGrads mm_cuda_backward(const at::Tensor& grad_out, const at::Tensor& x_in, const at::Tensor& t,
                         const at::Tensor& router_w, const at::Tensor& router_b, const at::Tensor& down_w,
                         const at::Tensor& down_b, const at::Tensor& up_w, const at::Tensor& up_b, double temperature,
                         double scale, int64_t groups, const MmAdapterShape& s, cudaStream_t stream) {
  const at::Tensor x = x_in.contiguous(), dy = grad_out.contiguous();
  const MmRouting m = mm_route(s, x, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature, scale);
  const auto opts = m.A.options();
  at::Tensor dx = at::empty_like(x);
  at::Tensor dA = at::zeros({s.r, s.D}, opts), dbA = at::zeros({s.r}, opts);
  at::Tensor G = at::zeros({s.B, s.rg * s.D}, opts), S = at::zeros({s.B, s.D}, opts);
  if (x.numel() > 0)
    cuda::mm::launch_mm_adapter_backward<DeviceT>(
        reinterpret_cast<const DeviceT*>(x.data_ptr<ScalarT>()), reinterpret_cast<const DeviceT*>(dy.data_ptr<ScalarT>()),
        reinterpret_cast<DeviceT*>(dx.data_ptr<ScalarT>()), m.A.data_ptr<float>(), m.bA.data_ptr<float>(),
        m.UsT.data_ptr<float>(), dA.data_ptr<float>(), dbA.data_ptr<float>(), G.data_ptr<float>(), S.data_ptr<float>(),
        s.B, mm_cuda_dims(s, "mm_adapter_backward"), stream);
  auto [dt, drw, drb, ddw, ddb, duw, dub] =
      mm_finalize(s, m, dA, dbA, G, S, temperature, scale, t, router_w, router_b, down_w, down_b, up_w, up_b);
  return {dx, dt, drw, drb, ddw, ddb, duw, dub};
}

// The entry points of the CUDA registration and of the emulator build: the shared checks, then the
// kernels for x's dtype. `on_device(x, op)` is the caller's: it checks the device (a CUDA device, or
// CPU tensors for the emulator), makes it current and returns the stream to launch on. It runs after
// the argument checks, so a wrong shape or a tensor on another device is reported first.
template <typename OnDevice>
at::Tensor mm_cuda_adapter(const at::Tensor& x, const at::Tensor& t, const at::Tensor& router_w,
                           const at::Tensor& router_b, const at::Tensor& down_w, const at::Tensor& down_b,
                           const at::Tensor& up_w, const at::Tensor& up_b, double temperature, double scale,
                           int64_t groups, OnDevice on_device) {
  const MmAdapterShape s = check_mm_adapter(x, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature, groups);
  const cudaStream_t stream = on_device(x, "mm_adapter");
  mm_cuda_check_dtype(x, "mm_adapter");
  if (x.scalar_type() == at::kFloat)
    return mm_cuda_forward<float, float>(x, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature, scale,
                                         groups, s, stream);
  return mm_cuda_forward<__nv_bfloat16, at::BFloat16>(x, t, router_w, router_b, down_w, down_b, up_w, up_b,
                                                      temperature, scale, groups, s, stream);
}

template <typename OnDevice>
MmGrads mm_cuda_adapter_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& t,
                                 const at::Tensor& router_w, const at::Tensor& router_b, const at::Tensor& down_w,
                                 const at::Tensor& down_b, const at::Tensor& up_w, const at::Tensor& up_b,
                                 double temperature, double scale, int64_t groups, OnDevice on_device) {
  const MmAdapterShape s =
      check_mm_adapter_backward(grad_out, x, t, router_w, router_b, down_w, down_b, up_w, up_b, temperature, groups);
  const cudaStream_t stream = on_device(x, "mm_adapter_backward");
  mm_cuda_check_dtype(x, "mm_adapter_backward");
  if (x.scalar_type() == at::kFloat)
    return mm_cuda_backward<float, float>(grad_out, x, t, router_w, router_b, down_w, down_b, up_w, up_b,
                                          temperature, scale, groups, s, stream);
  return mm_cuda_backward<__nv_bfloat16, at::BFloat16>(grad_out, x, t, router_w, router_b, down_w, down_b, up_w,
                                                       up_b, temperature, scale, groups, s, stream);
}

}  // namespace minilvlm
