// check_settings.cpp: which access checks run (racecheck, memcheck; docs/emulator.md, "Checks"):
// set_checks / get_checks, the MINILVLM_EMU_CHECKS default, and whether this build of _emu has the
// access instrumentation they need (an AddressSanitizer build has none). The checks are checks.cpp.
#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "emu/checks.h"
#include "emu/runtime.h"
#include "emu/simt.h"

namespace minilvlm_emu {
namespace detail {

std::atomic<bool> g_instrumented{false};

namespace {

std::atomic<unsigned> g_checks{~0u};  // ~0u: not read from MINILVLM_EMU_CHECKS yet

unsigned parse_checks(const std::string& text) {
  unsigned bits = 0;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    std::string name = text.substr(start, end - start);
    name.erase(0, name.find_first_not_of(" \t"));
    name.erase(name.find_last_not_of(" \t") + 1);
    if (name == "race") bits |= kCheckRace;
    else if (name == "memory") bits |= kCheckMemory;
    else if (name == "all") bits |= kCheckRace | kCheckMemory;
    else if (!name.empty() && name != "none" && name != "sync")
      throw std::invalid_argument("minilvlm emu: unknown check '" + name +
                                  "'; expected a comma-separated list of race, memory (or all, none)");
    start = end + 1;
  }
  return bits;
}

void require_instrumentation(unsigned bits) {
  if (bits && !g_instrumented.load())
    throw std::runtime_error(
        "minilvlm emu: racecheck and memcheck need the kernels compiled with the emulator's access "
        "instrumentation (-fsanitize=thread, without its runtime); this build of minilvlm._emu has none "
        "(an AddressSanitizer build?)");
}

}  // namespace

unsigned enabled_checks() {
  unsigned bits = g_checks.load(std::memory_order_relaxed);
  if (bits == ~0u) {
    const char* env = std::getenv("MINILVLM_EMU_CHECKS");
    bits = env ? parse_checks(env) : 0u;
    require_instrumentation(bits);
    g_checks.store(bits);
  }
  return bits;
}

}  // namespace detail

void set_checks(const std::string& checks) {
  const unsigned bits = detail::parse_checks(checks);
  detail::require_instrumentation(bits);
  detail::g_checks.store(bits);
}

std::string get_checks() {
  const unsigned bits = detail::enabled_checks();
  std::string s;
  if (bits & detail::kCheckRace) s += "race";
  if (bits & detail::kCheckMemory) s += s.empty() ? "memory" : ",memory";
  return s.empty() ? "none" : s;
}

bool checks_available() { return detail::g_instrumented.load(); }

}  // namespace minilvlm_emu
