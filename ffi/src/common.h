// Shared helpers for the shim's translation units: handle casts and the exception guard.
#pragma once

#include <exception>
#include <optional>
#include <string>
#include <vector>

#include "mlx/mlx.h"
#include "../mlx_shim.h"

namespace mx = mlx::core;

// The opaque C handle: a heap-allocated holder of one shared reference to an mx::array.
struct mlxs_array {
  mx::array value;
};

namespace shim {

void set_last_error(const char* message);

// Gives the malloc heap's free pages back to the system (glibc's malloc_trim; elsewhere nothing):
// blocks freed into the heap stay mapped for reuse (malloc_reuse.cpp) until asked here.
void return_free_heap();

// Whether an evaluation was given up on as a peer of the ring was lost (distributed.cpp): MLX's
// stream is then blocked for good, and whatever waits for it (clearing MLX's cache) would too.
bool stream_blocked();

// While one lives, MLX's ring tries a refused connect again within milliseconds rather than after
// its backoff's first second (ring_connect.cpp): the ring's own order makes that refusal common.
struct FastRingConnects {
  FastRingConnects();
  ~FastRingConnects();
};

inline const mx::array& ref(const mlxs_array* a) { return a->value; }

inline std::optional<mx::array> opt(const mlxs_array* a) {
  if (a == nullptr) return std::nullopt;
  return a->value;
}

inline int put(mlxs_array** out, mx::array a) {
  *out = new mlxs_array{std::move(a)};
  return 0;
}

// An op's several results, in order, into outs[0], outs[1], ...
inline int put_all(mlxs_array** outs, std::vector<mx::array> parts) {
  for (size_t i = 0; i < parts.size(); ++i) put(outs + i, std::move(parts[i]));
  return 0;
}

inline mx::Shape shape_of(const int32_t* dims, int n) { return mx::Shape(dims, dims + n); }
inline std::vector<int> ints(const int32_t* v, int n) { return std::vector<int>(v, v + n); }

inline std::vector<mx::array> arrays_of(mlxs_array* const* arrays, int n) {
  std::vector<mx::array> v;
  v.reserve(n);
  for (int i = 0; i < n; ++i) v.push_back(arrays[i]->value);
  return v;
}

mx::Dtype dtype_of(int code);
int code_of(mx::Dtype dtype);

// Runs `body`, turning any exception into a non-zero status and a last-error message.
template <typename F>
int guard(F&& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    set_last_error(e.what());
  } catch (...) {
    set_last_error("unknown C++ exception in MLX");
  }
  return 1;
}

}  // namespace shim
