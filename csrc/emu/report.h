// report.h: the text of the emulator's error messages (kernel names, thread ranges, call
// sites), kept apart from the scheduler in simt.cpp.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "emu/simt.h"

namespace minilvlm_emu {
namespace detail {

const char* base_name(const char* file);
std::string site(const char* file, int line);  // "file.cuh:42"
bool same_site(const char* f1, int l1, const char* f2, int l2);
std::string fmt_dim(uint3 d);  // "(x,y,z)"
std::string fmt_dim(dim3 d);
std::string hex32(unsigned v);
std::string kernel_name(const LaunchDesc& d);  // the launch name, plus the demangled symbol when it differs
std::string ranges(const std::vector<int>& ids);  // "0-31, 64-95"
const char* warp_op_name(int op);
const char* barrier_name(int kind);

// symbols.cpp: where things are in this module (minilvlm._emu), for the access checks and their
// messages. The module holds the kernels, their static __shared__ arrays (thread_local, so in its
// TLS segment) and any __constant__/__device__ variables (in its loaded segments).
struct ModuleLayout {
  uintptr_t base = 0;  // load address
  std::string path;
  std::vector<std::pair<uintptr_t, uintptr_t>> segments;  // loaded [lo, hi) ranges
  size_t tls_size = 0;                                    // bytes of its TLS segment
};
const ModuleLayout& this_module();
// This OS thread's copy of the module's TLS segment (allocated on first use of any of its
// thread_local variables; the caller must have touched one).
uintptr_t module_tls_block();
// "mm_adapter_kernels.cuh:64 in mm_tile_dots" for a code address in this module (addr2line on
// the module's debug line table), or "<module>+0x1234" without one.
std::string describe_code(uintptr_t pc);
// "buf of block_sum_kernel(float const*, float*, int), byte 12" for an offset in the TLS segment.
std::string describe_static_shared(size_t tls_offset);
std::string demangle(const char* mangled);

}  // namespace detail
}  // namespace minilvlm_emu
