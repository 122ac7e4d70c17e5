// A ring that forms without waiting a second for nothing (Linux; elsewhere MLX's connects as
// they are).
//
// MLX's ring backend forms in order: each rank accepts its previous rank's connection and then
// connects to the next rank, except the last rank, which connects to rank 0 first and listens
// only after that. So the next-to-last rank's connect races the last rank's listen, and is most
// often refused by microseconds; MLX then sleeps 1 s before trying again (then 2, 4 and 8 s).
// Every launch paid that second, and on a busy machine a join could outlast a --peer-timeout of
// a second or two (a CI run of the pipeline tests).
//
// While a FastRingConnects lives, MLX's calls to connect() come here (its GOT entry for connect
// points at connect_retrying): a refused connect is tried again every few milliseconds for most
// of that first second, and only then left to MLX's backoff.
#include <sys/socket.h>

#include "common.h"

#if defined(__linux__)
#include <elf.h>
#include <link.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>

namespace {

constexpr auto kRetryFor = std::chrono::milliseconds(800);  // within MLX's first wait of 1 s
constexpr auto kRetryEvery = std::chrono::milliseconds(5);

std::atomic<bool> retrying{false};

// A fresh socket of the same kind in place of `fd`: one whose connect failed is not to be
// connected again.
bool renew(int fd, int family) {
  int type = 0;
  socklen_t size = sizeof(type);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &size) != 0) return false;
  int fresh = socket(family, type, 0);
  if (fresh < 0) return false;
  bool renewed = dup2(fresh, fd) == fd;
  close(fresh);
  return renewed;
}

int connect_retrying(int fd, const sockaddr* address, socklen_t length) {
  int result = ::connect(fd, address, length);
  if (result == 0 || errno != ECONNREFUSED || !retrying.load()) return result;
  const auto until = std::chrono::steady_clock::now() + kRetryFor;
  while (std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(kRetryEvery);
    if (!renew(fd, address->sa_family)) break;
    result = ::connect(fd, address, length);
    if (result == 0 || errno != ECONNREFUSED) return result;
  }
  errno = ECONNREFUSED;  // what MLX logs with its next wait
  return result;
}

// Points libmlx's GOT entry for connect at connect_retrying (its PLT relocations: RELA on the
// 64-bit targets we build for). An object it cannot read is left as it is.
int point_mlx_connect_here(dl_phdr_info* info, size_t, void*) {
  if (info->dlpi_name == nullptr || std::strstr(info->dlpi_name, "/libmlx.") == nullptr) return 0;
  const ElfW(Dyn)* dynamic = nullptr;
  uintptr_t relro_start = 0, relro_end = 0;
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const auto& segment = info->dlpi_phdr[i];
    if (segment.p_type == PT_DYNAMIC) dynamic = reinterpret_cast<const ElfW(Dyn)*>(info->dlpi_addr + segment.p_vaddr);
    if (segment.p_type == PT_GNU_RELRO) {
      relro_start = info->dlpi_addr + segment.p_vaddr;
      relro_end = relro_start + segment.p_memsz;
    }
  }
  if (dynamic == nullptr) return 1;
  // glibc stores the dynamic section's addresses relocated; other loaders may leave offsets.
  auto address = [&](ElfW(Addr) a) { return a < info->dlpi_addr ? a + info->dlpi_addr : a; };
  const ElfW(Sym)* symbols = nullptr;
  const char* names = nullptr;
  const ElfW(Rela)* relocations = nullptr;
  size_t relocation_bytes = 0;
  bool rela = false;
  for (auto* d = dynamic; d->d_tag != DT_NULL; d++) {
    if (d->d_tag == DT_SYMTAB) symbols = reinterpret_cast<const ElfW(Sym)*>(address(d->d_un.d_ptr));
    if (d->d_tag == DT_STRTAB) names = reinterpret_cast<const char*>(address(d->d_un.d_ptr));
    if (d->d_tag == DT_JMPREL) relocations = reinterpret_cast<const ElfW(Rela)*>(address(d->d_un.d_ptr));
    if (d->d_tag == DT_PLTRELSZ) relocation_bytes = d->d_un.d_val;
    if (d->d_tag == DT_PLTREL) rela = d->d_un.d_val == DT_RELA;
  }
  if (symbols == nullptr || names == nullptr || relocations == nullptr || !rela) return 1;
  for (size_t i = 0; i < relocation_bytes / sizeof(ElfW(Rela)); i++) {
    const auto& symbol = symbols[ELF64_R_SYM(relocations[i].r_info)];
    if (std::strcmp(names + symbol.st_name, "connect") != 0) continue;
    auto slot = info->dlpi_addr + relocations[i].r_offset;
    // An entry bound at load (full RELRO) is read-only: opened for the write, then closed again.
    bool read_only = slot >= relro_start && slot < relro_end;
    auto page = slot & ~(static_cast<uintptr_t>(sysconf(_SC_PAGESIZE)) - 1);
    auto page_bytes = slot + sizeof(void*) - page;
    if (read_only && mprotect(reinterpret_cast<void*>(page), page_bytes, PROT_READ | PROT_WRITE) != 0) return 1;
    *reinterpret_cast<void**>(slot) = reinterpret_cast<void*>(&connect_retrying);
    if (read_only) mprotect(reinterpret_cast<void*>(page), page_bytes, PROT_READ);
  }
  return 1;
}

}  // namespace

shim::FastRingConnects::FastRingConnects() {
  static std::once_flag pointed;
  std::call_once(pointed, [] { dl_iterate_phdr(point_mlx_connect_here, nullptr); });
  retrying = true;
}

shim::FastRingConnects::~FastRingConnects() { retrying = false; }
#else
shim::FastRingConnects::FastRingConnects() {}
shim::FastRingConnects::~FastRingConnects() {}
#endif
