// module.cpp: the Python extension module minilvlm._emu. Importing it loads this library,
// whose static initialisers register the torch.ops.minilvlm_emu.* operators (selftest.cpp and
// the other emulated-kernel sources listed under "emu" in csrc/sources.txt).
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "minilvlm CUDA kernels run on the CPU by the SIMT emulator (tests only); ops live in torch.ops.minilvlm_emu";
}
