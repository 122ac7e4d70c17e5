// One persistent pool of worker threads shared by all our CPU kernels.
//
// Workers block on a condition variable between jobs rather than spin: the vCPUs of a shared
// or virtualised machine are contended, and spinning threads starve the thread that holds the
// work (llama.cpp's spinning pool collapsed to a few tokens/s on such a machine).
#pragma once

#include <functional>

namespace kernels {

// The threads a job runs on, the caller included: MLX_CPU_THREADS when set, otherwise the CPUs
// this process may run on.
int thread_count();

// Runs fn(task, thread) for every task in [0, n_tasks), spread over the pool; the calling thread
// takes part and the call returns when every task is done. `thread` is unique among the threads
// running this job (0..thread_count()-1), so per-thread scratch belongs to the job, not the pool.
// Safe to call from several threads at once and from inside a task: while the pool is busy with
// another job, the call runs its tasks on the calling thread alone. fn must not throw.
void parallel_for(int n_tasks, const std::function<void(int task, int thread)>& fn);

}  // namespace kernels
