// row_chunks.h: how the CPU row and activation kernels (rms_norm, layer_norm, swiglu, gelu) spread
// their work over threads.
//   for_row_chunks   whole rows in at most one chunk per thread, each chunk with its own zeroed
//                    float32 accumulator row for the parameter gradients (dweight, dbias); the
//                    accumulators are then summed in chunk order, so a run is repeatable at a
//                    given thread count
//   for_elements     a flat range of elements, for the elementwise activations
// Either runs on one thread below kMinTaskElements per task: waking a second thread costs more
// than it saves, and far more when other processes share the cores.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace minilvlm {

constexpr int64_t kMinTaskElements = 1 << 16;

// fn(row_begin, row_end, acc) for each chunk, acc being that chunk's float32 row of acc_width
// zeros (nullptr when acc_width is 0). Returns the accumulators summed over the chunks, [acc_width]
// float32 (an empty tensor when acc_width is 0).
template <typename Fn>
at::Tensor for_row_chunks(int64_t rows, int64_t dim, int64_t acc_width, Fn fn) {
  const int64_t by_size = std::max<int64_t>(1, rows * dim / kMinTaskElements);
  const int64_t chunks = std::max<int64_t>(1, std::min({by_size, rows, static_cast<int64_t>(at::get_num_threads())}));
  at::Tensor acc = at::zeros({acc_width > 0 ? chunks : 0, acc_width}, at::TensorOptions().dtype(at::kFloat));
  float* acc_data = acc_width > 0 ? acc.data_ptr<float>() : nullptr;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      fn(rows * c / chunks, rows * (c + 1) / chunks, acc_data ? acc_data + c * acc_width : nullptr);
  });
  return acc.sum(0);
}

// fn(begin, end) over [0, n) in parallel.
template <typename Fn>
void for_elements(int64_t n, Fn fn) {
  at::parallel_for(0, n, kMinTaskElements, fn);
}

}  // namespace minilvlm
