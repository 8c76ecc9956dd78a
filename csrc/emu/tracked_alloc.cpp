// tracked_alloc.cpp: the CPU allocator that minilvlm._emu installs when it is imported, so that
// memcheck knows the extent of every tensor a launch receives. It wraps the allocator that was in
// place (c10's default), records each allocation [ptr, ptr + n) and frees through the original.
// Each allocation is followed by kRedzoneBytes that belong to no tensor, so a read or write up to
// that far past the end of one buffer cannot land inside the next one and pass for in bounds.
// Tensors allocated before the import (or not by torch's CPU allocator: numpy, mmap) are unknown
// to it; memcheck then refuses the launch rather than guess their size. In an AddressSanitizer
// build the redzone is poisoned, so that ASan reports an access there as it would without it.
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <utility>

#include "emu/runtime.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define MINILVLM_EMU_POISON_(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define MINILVLM_EMU_UNPOISON_(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define MINILVLM_EMU_POISON_(p, n) ((void)(p), (void)(n))
#define MINILVLM_EMU_UNPOISON_(p, n) ((void)(p), (void)(n))
#endif

namespace minilvlm_emu {
namespace detail {

namespace {

constexpr size_t kRedzoneBytes = 256;

struct Allocation {
  size_t size;
  c10::DataPtr inner;
};

std::shared_mutex& registry_mutex() {
  static std::shared_mutex mu;
  return mu;
}
std::map<uintptr_t, Allocation>& registry() {
  static auto* r = new std::map<uintptr_t, Allocation>();  // never destroyed: frees may come at exit
  return *r;
}

class TrackingAllocator final : public c10::Allocator {
 public:
  explicit TrackingAllocator(c10::Allocator* base) : base_(base) {}

  c10::DataPtr allocate(size_t n) override {
    if (n == 0) return base_->allocate(0);
    c10::DataPtr inner = base_->allocate(n + kRedzoneBytes);
    void* p = inner.get();
    MINILVLM_EMU_POISON_(static_cast<char*>(p) + n, kRedzoneBytes);
    {
      std::unique_lock<std::shared_mutex> lock(registry_mutex());
      registry().insert_or_assign(reinterpret_cast<uintptr_t>(p), Allocation{n, std::move(inner)});
    }
    return c10::DataPtr(p, p, &release, c10::Device(c10::DeviceType::CPU));
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  static void release(void* p) {
    c10::DataPtr inner;
    {
      std::unique_lock<std::shared_mutex> lock(registry_mutex());
      auto it = registry().find(reinterpret_cast<uintptr_t>(p));
      if (it == registry().end()) return;
      MINILVLM_EMU_UNPOISON_(static_cast<char*>(p) + it->second.size, kRedzoneBytes);
      inner = std::move(it->second.inner);
      registry().erase(it);
    }
    // inner frees the memory through the original allocator when it goes out of scope.
  }

  c10::Allocator* base_;
};

// Installed by the module's static initialisers, before Python can allocate a tensor for it.
const bool g_installed = [] {
  static TrackingAllocator allocator(c10::GetCPUAllocator());
  c10::SetCPUAllocator(&allocator, /*priority=*/100);
  return true;
}();

}  // namespace

bool find_tracked_allocation(uintptr_t p, uintptr_t* lo, uintptr_t* hi) {
  std::shared_lock<std::shared_mutex> lock(registry_mutex());
  const auto& r = registry();
  auto it = r.upper_bound(p);
  if (it == r.begin()) return false;
  --it;
  if (p > it->first + it->second.size) return false;  // one past the end still belongs to it
  *lo = it->first;
  *hi = it->first + it->second.size;
  return true;
}

bool allocation_tracking_installed() { return g_installed; }

}  // namespace detail
}  // namespace minilvlm_emu
