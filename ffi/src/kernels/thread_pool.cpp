#include "thread_pool.h"

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif

namespace kernels {
namespace {

int threads_from_environment() {
  if (const char* env = std::getenv("MLX_CPU_THREADS"); env != nullptr && *env != '\0') {
    int n = std::atoi(env);
    if (n >= 1) return n;
  }
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

// Set on every thread while it runs a task, so a nested parallel_for runs inline.
thread_local bool in_task = false;

class Pool {
 public:
  explicit Pool(int threads) : size_(threads) {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { work(i); });
  }

  int size() const { return size_; }

  void run(int n_tasks, const std::function<void(int, int)>& fn) {
    if (n_tasks <= 0) return;
    std::unique_lock<std::mutex> job(job_mutex_, std::defer_lock);
    if (size_ == 1 || n_tasks == 1 || in_task || !job.try_lock()) {
      run_inline(n_tasks, fn);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      fn_ = &fn;
      n_tasks_ = n_tasks;
      next_.store(0, std::memory_order_relaxed);
      busy_workers_ = static_cast<int>(workers_.size());
      ++generation_;
    }
    wake_.notify_all();
    take_tasks(0);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return busy_workers_ == 0; });
    fn_ = nullptr;
  }

 private:
  static void run_inline(int n_tasks, const std::function<void(int, int)>& fn) {
    bool outer = in_task;
    in_task = true;
    for (int t = 0; t < n_tasks; ++t) fn(t, 0);
    in_task = outer;
  }

  void take_tasks(int thread) {
    in_task = true;
    for (int t = next_.fetch_add(1); t < n_tasks_; t = next_.fetch_add(1)) (*fn_)(t, thread);
    in_task = false;
  }

  void work(int thread) {
    unsigned long seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
      }
      take_tasks(thread);
      std::lock_guard<std::mutex> lock(mutex_);
      if (--busy_workers_ == 0) done_.notify_one();
    }
  }

  const int size_;
  std::vector<std::thread> workers_;
  std::mutex job_mutex_;  // one job at a time
  std::mutex mutex_;      // guards the job's fields and the counters below
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(int, int)>* fn_ = nullptr;
  int n_tasks_ = 0;
  std::atomic<int> next_{0};
  int busy_workers_ = 0;
  unsigned long generation_ = 0;
};

// Never destroyed: workers stay blocked until the process exits, so no exit-time ordering issue.
Pool& pool() {
  static Pool* instance = new Pool(threads_from_environment());
  return *instance;
}

}  // namespace

int thread_count() { return pool().size(); }

void parallel_for(int n_tasks, const std::function<void(int task, int thread)>& fn) {
  pool().run(n_tasks, fn);
}

}  // namespace kernels
