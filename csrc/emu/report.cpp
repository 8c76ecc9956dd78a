// report.cpp: formatting for the emulator's error messages (see report.h).
#include "emu/report.h"

#include <cxxabi.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace minilvlm_emu {
namespace detail {

const char* base_name(const char* file) {
  if (!file) return "?";
  const char* s = std::strrchr(file, '/');
  return s ? s + 1 : file;
}

std::string site(const char* file, int line) { return std::string(base_name(file)) + ":" + std::to_string(line); }

bool same_site(const char* f1, int l1, const char* f2, int l2) {
  return l1 == l2 && (f1 == f2 || (f1 && f2 && std::strcmp(f1, f2) == 0));
}

std::string fmt_dim(uint3 d) {
  return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}
std::string fmt_dim(dim3 d) { return fmt_dim(uint3{d.x, d.y, d.z}); }

std::string hex32(unsigned v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

std::string kernel_name(const LaunchDesc& d) {
  std::string s = "'" + std::string(d.name ? d.name : "?") + "'";
  Dl_info info;
  if (d.fn && dladdr(d.fn, &info) && info.dli_sname && info.dli_saddr == d.fn) {
    int status = 0;
    char* dem = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
    std::string full = (status == 0 && dem) ? dem : info.dli_sname;
    std::free(dem);
    if (full.compare(0, 5, "void ") == 0) full = full.substr(5);
    if (!full.empty() && full.back() == ')') {  // drop the parameter list
      int depth = 0;
      for (size_t i = full.size(); i-- > 0;) {
        if (full[i] == ')') ++depth;
        if (full[i] == '(' && --depth == 0) {
          full.resize(i);
          break;
        }
      }
    }
    const std::string name = d.name ? d.name : "";
    const bool same = full == name || (full.size() > name.size() + 2 &&
                                       full.compare(full.size() - name.size() - 2, std::string::npos, "::" + name) == 0);
    if (!same) s += " (" + full + ")";
  }
  return s;
}

// "0-31, 64-95"; long lists are cut after a few ranges.
std::string ranges(const std::vector<int>& ids) {
  std::string s;
  size_t i = 0;
  int shown = 0;
  while (i < ids.size()) {
    if (++shown > 6) {
      s += ", ... (" + std::to_string(ids.size()) + " threads)";
      break;
    }
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (!s.empty()) s += ", ";
    s += std::to_string(ids[i]);
    if (j > i) s += "-" + std::to_string(ids[j]);
    i = j + 1;
  }
  return s;
}

const char* warp_op_name(int op) {
  switch (op) {
    case kShflIdx: return "__shfl_sync";
    case kShflUp: return "__shfl_up_sync";
    case kShflDown: return "__shfl_down_sync";
    case kShflXor: return "__shfl_xor_sync";
    case kBallot: return "__ballot_sync";
    case kAny: return "__any_sync";
    case kAll: return "__all_sync";
    case kSyncwarp: return "__syncwarp";
    case kReduceAdd: return "__reduce_add_sync";
    case kReduceMin: return "__reduce_min_sync";
    case kReduceMax: return "__reduce_max_sync";
    default: return "warp primitive";
  }
}
const char* barrier_name(int kind) {
  switch (kind) {
    case 1: return "__syncthreads_count";
    case 2: return "__syncthreads_and";
    case 3: return "__syncthreads_or";
    default: return "__syncthreads";
  }
}

}  // namespace detail
}  // namespace minilvlm_emu
