// MLX's distributed engine (mlx::core::distributed): one group per process, initialised once
// from MLX_HOSTFILE/MLX_RANK (the ring backend) or explicit arguments; collective and
// point-to-point ops that are lazy arrays like any other. And a watchdog: the ring backend
// has no timeout of its own, so a peer that stops answering would leave a rank waiting forever.
#include <dirent.h>
#include <poll.h>
#include <sys/stat.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "common.h"

namespace md = mx::distributed;
using namespace shim;

namespace {

std::optional<md::Group> group;

md::Group& the_group() {
  if (!group) throw std::runtime_error("the distributed group is not initialised");
  return *group;
}

// The watchdog: a thread that ends the process with a message when a deadline passes.
struct Watchdog {
  std::mutex mutex;
  std::condition_variable changed;
  std::optional<std::chrono::steady_clock::time_point> deadline;
  std::string message;
  bool started = false;

  void run() {
    std::unique_lock lock(mutex);
    for (;;) {
      if (!deadline) {
        changed.wait(lock);
        continue;
      }
      auto until = *deadline;
      if (changed.wait_until(lock, until) == std::cv_status::timeout && deadline && *deadline <= until) {
        std::fprintf(stderr, "%s\n", message.c_str());
        std::fflush(stderr);
        std::_Exit(3);
      }
    }
  }
};

Watchdog& watchdog() {
  static Watchdog* w = new Watchdog();  // never destroyed: its thread may outlive static destructors
  return *w;
}

}  // namespace

extern "C" {

int mlxs_distributed_init(int* rank, int* size, const char* backend, const char* hostfile, int explicit_rank) {
  return guard([&] {
    // Explicit arguments win over the environment MLX reads them from.
    if (hostfile != nullptr && hostfile[0] != '\0') setenv("MLX_HOSTFILE", hostfile, 1);
    if (explicit_rank >= 0) setenv("MLX_RANK", std::to_string(explicit_rank).c_str(), 1);
    group = md::init(true, backend);
    *rank = group->rank();
    *size = group->size();
    return 0;
  });
}

int mlxs_distributed_all_sum(mlxs_array** out, const mlxs_array* x) {
  return guard([&] { return put(out, md::all_sum(ref(x), the_group())); });
}

int mlxs_distributed_send(mlxs_array** out, const mlxs_array* x, int dst) {
  return guard([&] { return put(out, md::send(ref(x), dst, the_group())); });
}

int mlxs_distributed_recv(mlxs_array** out, const int32_t* shape, int ndim, int dtype, int src) {
  return guard([&] { return put(out, md::recv(shape_of(shape, ndim), dtype_of(dtype), src, the_group())); });
}

int mlxs_depends(mlxs_array** out, const mlxs_array* input, const mlxs_array* dependency) {
  return guard([&] { return put(out, mx::depends({ref(input)}, {ref(dependency)})[0]); });
}

int mlxs_watchdog_arm(int timeout_ms, const char* message) {
  return guard([&] {
    auto& w = watchdog();
    std::lock_guard lock(w.mutex);
    if (!w.started) {
      std::thread([&w] { w.run(); }).detach();
      w.started = true;
    }
    w.deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    w.message = message;
    w.changed.notify_all();
    return 0;
  });
}

int mlxs_wait_readable(int timeout_ms) {
  // Every socket of this process: a rank that serves no HTTP has only its ring connections.
  std::vector<pollfd> fds;
  if (DIR* dir = opendir("/proc/self/fd")) {
    while (dirent* entry = readdir(dir)) {
      int fd = std::atoi(entry->d_name);
      struct stat st;
      if (fd > 2 && fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode)) fds.push_back({fd, POLLIN, 0});
    }
    closedir(dir);
  }
  if (fds.empty()) return 1;  // nothing to wait on here (not Linux): let the receive wait
  int n = poll(fds.data(), fds.size(), timeout_ms);
  return n > 0 ? 1 : 0;
}

void mlxs_watchdog_disarm(void) {
  auto& w = watchdog();
  std::lock_guard lock(w.mutex);
  w.deadline.reset();
  w.changed.notify_all();
}

}  // extern "C"
