// dispatch.h: the one dtype dispatch of the native ops, for CPU kernels and CUDA launch code alike.
//
//   dispatch_dtype<float, c10::BFloat16, double>(x.scalar_type(), "mm_adapter", [&](auto tag) {
//     using T = typename decltype(tag)::type;   // the C++ type that stores x's dtype
//     ...
//   });
//
// calls the lambda once, with the listed type whose dtype matches, and fails naming the op for any
// other dtype; what the lambda returns, dispatch_dtype returns. acc_t<T> is the type kernels
// compute in for data of type T. In code that launches CUDA kernels (nvcc, or the emulator build)
// cuda_scalar_t<T> and cuda_data<T>(tensor) give the CUDA element type with T's bits.
// ATen-light, so .cu files can include it.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <optional>
#include <type_traits>
#include <utility>

#if defined(__CUDACC__) || defined(MINILVLM_EMU)
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace minilvlm {

// A type passed as a value, so that a generic lambda can receive it.
template <typename T>
struct TypeTag {
  using type = T;
};

// float64 data is computed in double; everything else (float32, bfloat16, float16, uint8) in float.
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

namespace detail {
template <typename First, typename...>
struct FirstOf {
  using type = First;
};
}  // namespace detail

template <typename... Ts, typename Fn>
auto dispatch_dtype(at::ScalarType dtype, const char* op, Fn&& fn) {
  static_assert(sizeof...(Ts) > 0, "dispatch_dtype needs at least one type");
  using Result = std::invoke_result_t<Fn&, TypeTag<typename detail::FirstOf<Ts...>::type>>;
  if constexpr (std::is_void_v<Result>) {
    const bool found = ((dtype == c10::CppTypeToScalarType<Ts>::value && (fn(TypeTag<Ts>{}), true)) || ...);
    TORCH_CHECK(found, op, ": unsupported dtype ", dtype);
  } else {
    std::optional<Result> result;
    ((dtype == c10::CppTypeToScalarType<Ts>::value && (result.emplace(fn(TypeTag<Ts>{})), true)) || ...);
    TORCH_CHECK(result.has_value(), op, ": unsupported dtype ", dtype);
    return std::move(*result);
  }
}

#if defined(__CUDACC__) || defined(MINILVLM_EMU)
// The CUDA element type with the bits of an ATen one (c10::BFloat16 -> __nv_bfloat16,
// c10::Half -> __half, others unchanged), and a tensor's data as a pointer to it, for kernel arguments.
template <typename T>
struct CudaScalar {
  using type = T;
};
template <>
struct CudaScalar<c10::BFloat16> {
  using type = __nv_bfloat16;
};
template <>
struct CudaScalar<c10::Half> {
  using type = __half;
};
template <typename T>
using cuda_scalar_t = typename CudaScalar<T>::type;

template <typename T>
cuda_scalar_t<T>* cuda_data(const at::Tensor& t) {
  return reinterpret_cast<cuda_scalar_t<T>*>(t.data_ptr<T>());
}
#endif

}  // namespace minilvlm
