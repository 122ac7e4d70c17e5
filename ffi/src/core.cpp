// Errors, devices, array handles, host transfer, evaluation and memory counters.
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "common.h"

namespace shim {

namespace {
thread_local std::string last_error;
constexpr mx::Dtype kDtypes[] = {
    mx::bool_,   mx::uint8,   mx::uint16,  mx::uint32,   mx::uint64,
    mx::int8,    mx::int16,   mx::int32,   mx::int64,    mx::float16,
    mx::float32, mx::float64, mx::bfloat16, mx::complex64};
}  // namespace

void set_last_error(const char* message) { last_error = message; }

mx::Dtype dtype_of(int code) {
  if (code < 0 || code >= static_cast<int>(std::size(kDtypes))) {
    throw std::invalid_argument("unknown dtype code " + std::to_string(code));
  }
  return kDtypes[code];
}

int code_of(mx::Dtype dtype) { return static_cast<int>(dtype.val()); }

}  // namespace shim

using namespace shim;

extern "C" {

const char* mlxs_last_error(void) { return last_error.c_str(); }

void** mlxs_out_slots(void) {
  static thread_local void* slots[8] = {};
  return slots;
}
const char* mlxs_version(void) { return mx::version(); }

int mlxs_set_default_device(int kind) {
  return guard([&] {
    mx::set_default_device(kind == 1 ? mx::Device::gpu : mx::Device::cpu);
    return 0;
  });
}

int mlxs_default_device(void) { return mx::default_device() == mx::Device::gpu ? 1 : 0; }

int mlxs_new_stream(int* out) {
  return guard([&] {
    *out = mx::new_stream(mx::default_device()).index;
    return 0;
  });
}

int mlxs_default_stream(void) {
  try {
    return mx::default_stream(mx::default_device()).index;
  } catch (const std::exception& e) {
    set_last_error(e.what());
    return -1;
  }
}

int mlxs_set_default_stream(int index) {
  return guard([&] {
    mx::set_default_stream(mx::Stream(index, mx::default_device()));
    return 0;
  });
}
int mlxs_gpu_available(void) { return mx::is_available(mx::Device::gpu) ? 1 : 0; }

void mlxs_array_free(mlxs_array* a) { delete a; }

int mlxs_array_retain(mlxs_array** out, const mlxs_array* a) {
  return guard([&] { return put(out, ref(a)); });
}

int mlxs_array_from_data(mlxs_array** out, const void* data, const int32_t* shape, int ndim, int dtype) {
  return guard([&] {
    mx::Dtype t = dtype_of(dtype);
    mx::Shape s = shape_of(shape, ndim);
    size_t count = 1;
    for (auto d : s) count *= d;
    // Copy the host bytes: the caller's memory is not ours to keep. MLX takes over the
    // copy (without another one where the backend can) and frees it with std::free.
    size_t nbytes = count * t.size();
    void* copy = std::malloc(nbytes > 0 ? nbytes : 1);
    if (copy == nullptr) throw std::bad_alloc();
    if (nbytes > 0) std::memcpy(copy, data, nbytes);
    return put(out, mx::array(copy, std::move(s), t, [](void* p) { std::free(p); }));
  });
}

int mlxs_array_from_scalar(mlxs_array** out, double value, int dtype) {
  return guard([&] { return put(out, mx::array(value, dtype_of(dtype))); });
}

int mlxs_array_ndim(const mlxs_array* a) { return static_cast<int>(a->value.ndim()); }

int mlxs_array_shape(const mlxs_array* a, int32_t* shape_out) {
  for (size_t i = 0; i < a->value.ndim(); ++i) shape_out[i] = a->value.shape(static_cast<int>(i));
  return 0;
}

int mlxs_array_dtype(const mlxs_array* a) { return code_of(a->value.dtype()); }
size_t mlxs_array_size(const mlxs_array* a) { return a->value.size(); }
size_t mlxs_array_nbytes(const mlxs_array* a) { return a->value.nbytes(); }

// The array evaluated, then its elements in row-major order: the array itself where they lie so
// already (a step's tokens, logits), else a contiguous copy. Reading must not add a node when it
// need not: a node goes to the back of the stream's queue, so reading step N's tokens that way
// waited for step N + 1, queued just before to keep the stream busy, and the stream then stood
// idle while the next step was built.
namespace {
mx::array evaluated_rows(const mx::array& a) {
  mx::array c = a;
  c.eval();
  if (c.flags().row_contiguous) return c;
  c = mx::contiguous(c);
  c.eval();
  return c;
}

// A host destination of `holds` elements of `unit` for an array of `has`: the same number, or an error.
void check_destination(const char* what, size_t holds, size_t has, const char* unit) {
  if (holds != has)
    throw std::invalid_argument(std::string(what) + ": destination holds " + std::to_string(holds) + " " + unit +
                                ", array has " + std::to_string(has));
}
}  // namespace

int mlxs_array_to_host(const mlxs_array* a, void* dst, size_t nbytes) {
  return guard([&] {
    const mx::array c = evaluated_rows(ref(a));
    check_destination("to_host", nbytes, c.nbytes(), "bytes");
    if (nbytes > 0) std::memcpy(dst, c.data<void>(), nbytes);
    return 0;
  });
}

int mlxs_array_to_host_float32(const mlxs_array* a, float* dst, size_t count) {
  return guard([&] {
    const mx::array c = evaluated_rows(ref(a));
    check_destination("to_host_float32", count, c.size(), "floats");
    // Widened here rather than by an astype node, for the same reason as evaluated_rows.
    const auto widen = [&](const auto* from) { std::copy(from, from + count, dst); };
    switch (c.dtype()) {
      case mx::float16: widen(c.data<mx::float16_t>()); break;
      case mx::bfloat16: widen(c.data<mx::bfloat16_t>()); break;
      case mx::float32: widen(c.data<float>()); break;
      default: throw std::invalid_argument("to_host_float32: not a float array");
    }
    return 0;
  });
}

int mlxs_array_item(const mlxs_array* a, double* out) {
  return guard([&] {
    if (a->value.size() != 1) throw std::invalid_argument("item: array has " + std::to_string(a->value.size()) + " elements, expected 1");
    mx::array c = ref(a);
    c.eval();  // its own event only (see evaluated_rows); converted here, not by an op
    switch (c.dtype()) {
      case mx::bool_: *out = *c.data<bool>(); break;
      case mx::uint8: *out = *c.data<uint8_t>(); break;
      case mx::uint16: *out = *c.data<uint16_t>(); break;
      case mx::uint32: *out = *c.data<uint32_t>(); break;
      case mx::uint64: *out = static_cast<double>(*c.data<uint64_t>()); break;
      case mx::int8: *out = *c.data<int8_t>(); break;
      case mx::int16: *out = *c.data<int16_t>(); break;
      case mx::int32: *out = *c.data<int32_t>(); break;
      case mx::int64: *out = static_cast<double>(*c.data<int64_t>()); break;
      case mx::float16: *out = static_cast<float>(*c.data<mx::float16_t>()); break;
      case mx::bfloat16: *out = static_cast<float>(*c.data<mx::bfloat16_t>()); break;
      case mx::float32: *out = *c.data<float>(); break;
      case mx::float64: *out = *c.data<double>(); break;
      default: throw std::invalid_argument("item: a complex array has no single real value");
    }
    return 0;
  });
}

int mlxs_eval(mlxs_array* const* arrays, int n) {
  return guard([&] {
    mx::eval(arrays_of(arrays, n));
    return 0;
  });
}

int mlxs_async_eval(mlxs_array* const* arrays, int n) {
  return guard([&] {
    mx::async_eval(arrays_of(arrays, n));
    return 0;
  });
}

size_t mlxs_active_memory(void) { return mx::get_active_memory(); }
size_t mlxs_peak_memory(void) { return mx::get_peak_memory(); }
size_t mlxs_cache_memory(void) { return mx::get_cache_memory(); }
void mlxs_reset_peak_memory(void) { mx::reset_peak_memory(); }
size_t mlxs_set_memory_limit(size_t limit) { return mx::set_memory_limit(limit); }
size_t mlxs_set_cache_limit(size_t limit) { return mx::set_cache_limit(limit); }
void mlxs_clear_cache(void) {
  // MLX waits for the CPU streams first: for ever where a lost peer blocked one (what it would
  // free stays cached then), else raising a stream's error (a ring transfer that failed).
  if (!shim::stream_blocked()) {
    try {
      mx::clear_cache();
    } catch (const std::exception&) {
    }
  }
  shim::return_free_heap();
}

}  // extern "C"
