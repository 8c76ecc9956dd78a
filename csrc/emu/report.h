// report.h: the text of the emulator's error messages (kernel names, thread ranges, call
// sites), kept apart from the scheduler in simt.cpp.
#pragma once

#include <string>
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

}  // namespace detail
}  // namespace minilvlm_emu
