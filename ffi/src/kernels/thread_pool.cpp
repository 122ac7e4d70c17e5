#include "thread_pool.h"

#include <atomic>
#include <chrono>
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

// How long a thread waits for the next job (a worker) or for the others' tasks (the caller)
// before it blocks. A decode step runs ~200 small parallel ops back to back, tens of
// microseconds apart, and a futex sleep and wake-up costs about as much as such an op; the
// wait yields the core on every turn, so on a busy machine whoever else is runnable still runs.
constexpr auto kSpin = std::chrono::microseconds(100);

template <typename Ready>
bool spin_until(Ready ready) {
  const auto until = std::chrono::steady_clock::now() + kSpin;
  do {
    if (ready()) return true;
    std::this_thread::yield();
  } while (std::chrono::steady_clock::now() < until);
  return ready();
}

// A job is claimed task by task under the pool's mutex, and the caller returns as soon as every
// task is done: a worker the OS has not scheduled yet (the machine is busy) finds the job
// finished when it wakes and goes back to sleep, rather than holding up the caller.
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
      next_ = 0;
      done_tasks_ = 0;
      ++generation_;
    }
    wake_.notify_all();
    take_tasks(0, generation_);
    const bool done = spin_until([&] { return done_tasks_.load(std::memory_order_acquire) == n_tasks; });
    std::unique_lock<std::mutex> lock(mutex_);
    if (!done) done_.wait(lock, [this] { return done_tasks_ == n_tasks_; });
    fn_ = nullptr;
    n_tasks_ = next_ = 0;
    done_tasks_ = 0;
  }

 private:
  static void run_inline(int n_tasks, const std::function<void(int, int)>& fn) {
    bool outer = in_task;
    in_task = true;
    for (int t = 0; t < n_tasks; ++t) fn(t, 0);
    in_task = outer;
  }

  // Runs tasks of job `generation` until none is left to claim.
  void take_tasks(int thread, unsigned long generation) {
    in_task = true;
    std::unique_lock<std::mutex> lock(mutex_);
    while (generation_ == generation && next_ < n_tasks_) {
      const int task = next_++;
      const auto* fn = fn_;
      lock.unlock();
      (*fn)(task, thread);
      lock.lock();
      if (++done_tasks_ == n_tasks_) done_.notify_one();
    }
    in_task = false;
  }

  void work(int thread) {
    unsigned long seen = 0;
    for (;;) {
      if (!spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; })) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen; });
      }
      seen = generation_;
      take_tasks(thread, seen);
    }
  }

  const int size_;
  std::vector<std::thread> workers_;
  std::mutex job_mutex_;  // one job at a time
  std::mutex mutex_;      // guards the job's fields below
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(int, int)>* fn_ = nullptr;
  int n_tasks_ = 0;
  int next_ = 0;
  std::atomic<int> done_tasks_{0};  // read without the mutex while spinning
  std::atomic<unsigned long> generation_{0};
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
