// A fused op first builds the composition of MLX ops it stands for, for what that tells: that
// the arguments fit together and every intermediate's type. That is a handful of ops built and
// thrown away per call, and every layer calls it again in every decode step (10-20 µs a call,
// about half of building a step's graph in a pipeline stage). What it tells depends only on the
// inputs' shapes and types and the op's numbers, so an op remembers it per such signature and
// builds the composition only for a signature it has not seen (or where it must run it).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <vector>

#include "mlx/array.h"

namespace kernels {

// Arrays' types and shapes and plain numbers, in the order given.
class Signature {
 public:
  Signature& operator<<(const mlx::core::array& a) {
    key_.push_back(static_cast<int64_t>(a.dtype().val()));
    key_.push_back(a.ndim());
    key_.insert(key_.end(), a.shape().begin(), a.shape().end());
    return *this;
  }
  Signature& operator<<(int64_t n) {
    key_.push_back(n);
    return *this;
  }
  bool operator<(const Signature& other) const { return key_ < other.key_; }

 private:
  std::vector<int64_t> key_;
};

// What composing told, per signature. Bounded: prefill chunks come in many lengths, so past
// `kLimit` signatures it starts afresh (decode steps' few come back at once).
template <typename Verdict>
class SignatureMemo {
 public:
  std::optional<Verdict> find(const Signature& s) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = seen_.find(s);
    if (it == seen_.end()) return std::nullopt;
    return it->second;
  }
  void remember(const Signature& s, const Verdict& v) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (seen_.size() >= kLimit) seen_.clear();
    seen_.emplace(s, v);
  }

 private:
  static constexpr size_t kLimit = 512;
  std::mutex mutex_;
  std::map<Signature, Verdict> seen_;
};

}  // namespace kernels
