// module.cpp: the Python extension module minilvlm._emu. Importing it loads this library, whose
// static initialisers register the torch.ops.minilvlm_emu.* operators (control.cpp, selftest.cpp
// and the other sources listed under "emu" in csrc/sources.txt) and install the tracking CPU
// allocator that memcheck reads (tracked_alloc.cpp). It defines EmulatorError, what a failed
// launch raises (a RuntimeError).
#include <torch/extension.h>

#include "emu/simt.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "minilvlm CUDA kernels run on the CPU by the SIMT emulator (tests only); ops live in torch.ops.minilvlm_emu";
  pybind11::register_exception<minilvlm_emu::EmulatorError>(m, "EmulatorError", PyExc_RuntimeError);
}
