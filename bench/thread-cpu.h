// What the single-kernel C++ benches (attention-decode.cpp, quantized-attention-decode.cpp) time
// with: the calling thread's CPU time, which other processes on a shared machine move little,
// and the median of the steps.
#pragma once

#include <time.h>

#include <algorithm>
#include <vector>

static double thread_cpu_ms() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
