// registration.cpp: every op of the minilvlm library is declared here (schema strings in
// common/schemas.h), plus the Python module entry of minilvlm._C. Kernels register their
// implementations beside themselves with TORCH_LIBRARY_IMPL(minilvlm, CPU|CUDA, m) (cpu/<op>.cpp,
// cuda/<op>.cu); Python adds fakes and autograd (register_<op> in minilvlm/ops/<op>.py). Mutating
// ops mark their outputs Tensor(x!). See docs/design.md, "The op contract".
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "common/schemas.h"
#ifdef MINILVLM_WITH_CUDA
// Written by the build (setup.py, CMakeLists.txt) into its own folder: MINILVLM_CUDA_ARCH_LIST, the
// TORCH_CUDA_ARCH_LIST that nvcc compiled the kernels for, so the binary reports its own images.
#include "minilvlm_cuda_archs.h"
#endif

namespace minilvlm {
std::string cpu_capability();                          // csrc/cpu/capability.cpp
PyObject* flat_views_intact(PyObject*, PyObject* args);  // csrc/flat_views.cpp

bool built_with_cuda() {
#ifdef MINILVLM_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// The architectures the CUDA kernels carry, as TORCH_CUDA_ARCH_LIST spells them ("8.0;9.0;12.0+PTX":
// SASS for each entry, PTX where marked); "" in a build without CUDA kernels.
// minilvlm/ops/_registry.py decides from it whether a device can run them.
std::string cuda_archs() {
#ifdef MINILVLM_WITH_CUDA
  return MINILVLM_CUDA_ARCH_LIST;
#else
  return "";
#endif
}
}  // namespace minilvlm

TORCH_LIBRARY(minilvlm, m) {
  // csrc/cpu/fused_adamw.cpp, csrc/cuda/fused_adamw.cu
  m.def(MINILVLM_SCHEMA_FUSED_ADAMW);
  m.def(MINILVLM_SCHEMA_FUSED_ADAMW_MULTI);
  // csrc/cpu/patch_embed.cpp, csrc/cuda/patch_embed.cu
  m.def(MINILVLM_SCHEMA_PATCH_EMBED);
  m.def(MINILVLM_SCHEMA_PATCH_EMBED_BACKWARD);
  // Which SIMD path the CPU kernels take: "avx512_bf16", "avx512", "avx2" or "default".
  m.def("cpu_capability() -> str", &minilvlm::cpu_capability);
  m.def("built_with_cuda() -> bool", &minilvlm::built_with_cuda);
  m.def("cuda_archs() -> str", &minilvlm::cuda_archs);
  // csrc/cpu/mm_adapter.cpp, csrc/cuda/mm_adapter.cu
  m.def(MINILVLM_SCHEMA_MM_ADAPTER);
  m.def(MINILVLM_SCHEMA_MM_ADAPTER_BACKWARD);
  // csrc/cpu/rms_norm.cpp, csrc/cuda/rms_norm.cu
  m.def(MINILVLM_SCHEMA_RMS_NORM);
  m.def(MINILVLM_SCHEMA_RMS_NORM_BACKWARD);
  // csrc/cpu/layer_norm.cpp, csrc/cuda/layer_norm.cu
  m.def(MINILVLM_SCHEMA_LAYER_NORM);
  m.def(MINILVLM_SCHEMA_LAYER_NORM_BACKWARD);
  // csrc/cpu/swiglu.cpp, csrc/cuda/swiglu.cu
  m.def(MINILVLM_SCHEMA_SWIGLU);
  m.def(MINILVLM_SCHEMA_SWIGLU_BACKWARD);
  // csrc/cpu/gelu.cpp, csrc/cuda/gelu.cu
  m.def(MINILVLM_SCHEMA_GELU);
  m.def(MINILVLM_SCHEMA_GELU_BACKWARD);
  // csrc/cpu/rope.cpp, csrc/cuda/rope.cu
  m.def(MINILVLM_SCHEMA_ROPE);
  m.def(MINILVLM_SCHEMA_ROPE_BACKWARD);
  // csrc/cpu/linear_cross_entropy.cpp, csrc/cuda/linear_cross_entropy.cu
  m.def(MINILVLM_SCHEMA_LINEAR_CROSS_ENTROPY);
}

// minilvlm._C: importing it registers the ops above. Its one Python function is a hot-path
// helper of the optimizers that the dispatcher would only slow down.
static PyMethodDef methods[] = {
    {"flat_views_intact", minilvlm::flat_views_intact, METH_VARARGS,
     "flat_views_intact(params, param_ptrs, grad_ptrs) -> index of the first moved param or grad, or -1"},
    {nullptr, nullptr, 0, nullptr}};

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "minilvlm native kernels", -1, methods,
                                      nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module);
}
