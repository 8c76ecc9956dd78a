// symbols.cpp: the layout of this module (minilvlm._emu) in memory and the names behind its
// addresses, for the access checks (checks.cpp) and their messages: code addresses become
// "file:line in function" through addr2line and the module's line table (it is built with -g1),
// offsets into the TLS segment become the static __shared__ array they belong to, through the
// module's ELF symbol table. Only error paths pay for names.
#include <cxxabi.h>
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "emu/report.h"

namespace minilvlm_emu {
namespace detail {

namespace {

struct TlsSymbol {
  uint64_t offset, size;
  std::string name;
};

int collect_segments(dl_phdr_info* info, size_t, void* data) {
  auto* layout = static_cast<ModuleLayout*>(data);
  if (info->dlpi_addr != layout->base) return 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const auto& ph = info->dlpi_phdr[i];
    if (ph.p_type == PT_LOAD)
      layout->segments.emplace_back(info->dlpi_addr + ph.p_vaddr, info->dlpi_addr + ph.p_vaddr + ph.p_memsz);
    if (ph.p_type == PT_TLS) layout->tls_size = ph.p_memsz;
  }
  return 1;
}

struct TlsQuery {
  uintptr_t base;
  uintptr_t block;
};

int find_tls_block(dl_phdr_info* info, size_t, void* data) {
  auto* q = static_cast<TlsQuery*>(data);
  if (info->dlpi_addr != q->base) return 0;
  q->block = reinterpret_cast<uintptr_t>(info->dlpi_tls_data);
  return 1;
}

// The STT_TLS symbols of the module file (static __shared__ arrays and other thread_locals).
std::vector<TlsSymbol> read_tls_symbols(const std::string& path) {
  std::vector<TlsSymbol> out;
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  struct stat st;
  void* map = fstat(fd, &st) == 0 ? mmap(nullptr, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
  close(fd);
  if (map == MAP_FAILED) return out;
  const auto* bytes = static_cast<const unsigned char*>(map);
  const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(bytes);
  if (std::memcmp(eh->e_ident, ELFMAG, SELFMAG) == 0 && eh->e_ident[EI_CLASS] == ELFCLASS64) {
    const auto* sh = reinterpret_cast<const Elf64_Shdr*>(bytes + eh->e_shoff);
    for (int i = 0; i < eh->e_shnum; ++i) {
      if (sh[i].sh_type != SHT_SYMTAB) continue;
      const auto* syms = reinterpret_cast<const Elf64_Sym*>(bytes + sh[i].sh_offset);
      const char* strtab = reinterpret_cast<const char*>(bytes + sh[sh[i].sh_link].sh_offset);
      for (size_t k = 0; k < sh[i].sh_size / sizeof(Elf64_Sym); ++k)
        if (ELF64_ST_TYPE(syms[k].st_info) == STT_TLS && syms[k].st_size > 0)
          out.push_back({syms[k].st_value, syms[k].st_size, demangle(strtab + syms[k].st_name)});
    }
  }
  munmap(map, st.st_size);
  return out;
}

// "void ns::k<float>(float const*, int)" -> "ns::k<float>"; "f.cuh:48 (discriminator 3)" -> "f.cuh:48".
std::string strip_params(std::string f) {
  if (f.compare(0, 5, "void ") == 0) f = f.substr(5);
  if (!f.empty() && f.back() == ')') {
    int depth = 0;
    for (size_t i = f.size(); i-- > 0;) {
      if (f[i] == ')') ++depth;
      if (f[i] == '(' && --depth == 0) {
        f.resize(i);
        break;
      }
    }
  }
  return f;
}

// addr2line -f -C -i: pairs of lines (function, file:line), innermost inline frame first.
std::string run_addr2line(const ModuleLayout& m, uintptr_t offset) {
  char cmd[4200];
  std::snprintf(cmd, sizeof cmd, "addr2line -f -C -i -e '%s' 0x%lx 2>/dev/null", m.path.c_str(),
                static_cast<unsigned long>(offset));
  FILE* p = popen(cmd, "r");
  if (!p) return "";
  std::vector<std::string> lines;
  char buf[4096];
  while (std::fgets(buf, sizeof buf, p)) {
    std::string s(buf);
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
    const size_t disc = s.find(" (discriminator");
    if (disc != std::string::npos) s.resize(disc);
    lines.push_back(s);
  }
  pclose(p);
  if (lines.size() < 2 || lines[1].rfind("??", 0) == 0) return "";
  std::string out = base_name(lines[1].c_str()) + std::string(" in ") + strip_params(lines[0]);
  if (lines.size() >= 4) {  // inlined: also name the outermost caller
    const size_t k = (lines.size() / 2 - 1) * 2;
    out += " (inlined into " + strip_params(lines[k]) + " at " + base_name(lines[k + 1].c_str()) + ")";
  }
  return out;
}

}  // namespace

std::string demangle(const char* mangled) {
  int status = 0;
  char* dem = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string s = (status == 0 && dem) ? dem : mangled;
  std::free(dem);
  return s;
}

const ModuleLayout& this_module() {
  static const ModuleLayout layout = [] {
    ModuleLayout m;
    Dl_info info;
    if (dladdr(reinterpret_cast<void*>(&this_module), &info) && info.dli_fname) {
      m.base = reinterpret_cast<uintptr_t>(info.dli_fbase);
      m.path = info.dli_fname;
      dl_iterate_phdr(&collect_segments, &m);
    }
    return m;
  }();
  return layout;
}

uintptr_t module_tls_block() {
  TlsQuery q{this_module().base, 0};
  dl_iterate_phdr(&find_tls_block, &q);
  return q.block;
}

std::string describe_code(uintptr_t pc) {
  static std::mutex mu;
  static std::map<uintptr_t, std::string> cache;
  const ModuleLayout& m = this_module();
  const uintptr_t offset = pc - m.base - 1;  // pc is a return address: look up the call itself
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(offset);
  if (it != cache.end()) return it->second;
  std::string s = run_addr2line(m, offset);
  if (s.empty()) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "+0x%lx", static_cast<unsigned long>(offset));
    s = std::string(base_name(m.path.c_str())) + buf + " (no line table: build with -g1)";
  }
  return cache.emplace(offset, s).first->second;
}

std::string describe_static_shared(size_t tls_offset) {
  static const std::vector<TlsSymbol> symbols = read_tls_symbols(this_module().path);
  for (const TlsSymbol& s : symbols)
    if (tls_offset >= s.offset && tls_offset < s.offset + s.size)
      return "__shared__ " + s.name + ", byte " + std::to_string(tls_offset - s.offset);
  return "static __shared__ memory at offset " + std::to_string(tls_offset) + " of the module's TLS segment";
}

}  // namespace detail
}  // namespace minilvlm_emu
