// Runs a kernel body templated on a small count (rows, vectors) that is known only at run time:
// the body's sums then stay in registers, sized by a constant.
#pragma once

namespace kernels {
namespace {

// f.template operator()<N>() with N = count for counts 1 to Max - 1, and N = Max for Max and more.
template <int Max, int N = 1, typename F>
inline void with_count(int count, F&& f) {
  if constexpr (N == Max) {
    f.template operator()<N>();
  } else {
    if (count <= N) f.template operator()<N>();
    else with_count<Max, N + 1>(count, f);
  }
}

}  // namespace
}  // namespace kernels
