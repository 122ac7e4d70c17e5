// File formats: safetensors and GGUF loads as "bundles" (named arrays plus metadata),
// and safetensors saves.
#include <cstring>

#include "common.h"

using namespace shim;

// Loaded arrays and metadata, in a stable order so they can be walked by index from C.
struct mlxs_bundle {
  std::vector<std::pair<std::string, mx::array>> arrays;
  std::vector<std::pair<std::string, mx::GGUFMetaData>> meta;
  // String lists flattened on first request, so one call hands over a whole vocabulary.
  std::vector<std::string> joined_lists;
};

namespace {

std::vector<std::string> split_nul(const char* packed, int n) {
  std::vector<std::string> out;
  out.reserve(n);
  for (int i = 0; i < n; ++i) {
    out.emplace_back(packed);
    packed += out.back().size() + 1;
  }
  return out;
}

template <typename Map>
void take_arrays(mlxs_bundle* b, Map& arrays) {
  b->arrays.reserve(arrays.size());
  for (auto& [name, arr] : arrays) b->arrays.emplace_back(name, std::move(arr));
}

void check_index(const mlxs_bundle* b, int i, bool meta) {
  size_t size = meta ? b->meta.size() : b->arrays.size();
  if (i < 0 || static_cast<size_t>(i) >= size) throw std::out_of_range("bundle index " + std::to_string(i));
}

}  // namespace

extern "C" {

int mlxs_load_safetensors(mlxs_bundle** out, const char* path) {
  return guard([&] {
    auto [arrays, meta] = mx::load_safetensors(std::string(path));
    auto* b = new mlxs_bundle();
    take_arrays(b, arrays);
    for (auto& [k, v] : meta) b->meta.emplace_back(k, v);
    *out = b;
    return 0;
  });
}

int mlxs_load_gguf(mlxs_bundle** out, const char* path) {
  return guard([&] {
    auto [arrays, meta] = mx::load_gguf(std::string(path));
    auto* b = new mlxs_bundle();
    take_arrays(b, arrays);
    for (auto& [k, v] : meta) b->meta.emplace_back(k, std::move(v));
    b->joined_lists.resize(b->meta.size());
    *out = b;
    return 0;
  });
}

void mlxs_bundle_free(mlxs_bundle* b) { delete b; }
int mlxs_bundle_array_count(const mlxs_bundle* b) { return static_cast<int>(b->arrays.size()); }
int mlxs_bundle_meta_count(const mlxs_bundle* b) { return static_cast<int>(b->meta.size()); }

const char* mlxs_bundle_array_name(const mlxs_bundle* b, int i) {
  return (i >= 0 && static_cast<size_t>(i) < b->arrays.size()) ? b->arrays[i].first.c_str() : nullptr;
}

int mlxs_bundle_array(mlxs_array** out, const mlxs_bundle* b, int i) {
  return guard([&] {
    check_index(b, i, false);
    return put(out, b->arrays[i].second);
  });
}

const char* mlxs_bundle_meta_name(const mlxs_bundle* b, int i) {
  return (i >= 0 && static_cast<size_t>(i) < b->meta.size()) ? b->meta[i].first.c_str() : nullptr;
}

int mlxs_bundle_meta_kind(const mlxs_bundle* b, int i) {
  if (i < 0 || static_cast<size_t>(i) >= b->meta.size()) return -1;
  return static_cast<int>(b->meta[i].second.index());
}

const char* mlxs_bundle_meta_string(const mlxs_bundle* b, int i) {
  if (mlxs_bundle_meta_kind(b, i) != 2) return nullptr;
  return std::get<std::string>(b->meta[i].second).c_str();
}

int mlxs_bundle_meta_array(mlxs_array** out, const mlxs_bundle* b, int i) {
  return guard([&] {
    check_index(b, i, true);
    if (b->meta[i].second.index() != 1) throw std::invalid_argument("metadata entry is not an array: " + b->meta[i].first);
    return put(out, std::get<mx::array>(b->meta[i].second));
  });
}

const char* mlxs_bundle_meta_strings(const mlxs_bundle* b, int i, size_t* nbytes) {
  if (mlxs_bundle_meta_kind(b, i) != 3) return nullptr;
  auto* self = const_cast<mlxs_bundle*>(b);
  if (self->joined_lists.size() != self->meta.size()) self->joined_lists.resize(self->meta.size());
  std::string& joined = self->joined_lists[i];
  if (joined.empty()) {
    for (const auto& s : std::get<std::vector<std::string>>(b->meta[i].second)) {
      joined.append(s);
      joined.push_back('\0');
    }
  }
  *nbytes = joined.size();
  return joined.data();
}

int mlxs_save_safetensors(const char* path, const char* names, mlxs_array* const* arrays, int n,
                          const char* meta_keys, const char* meta_values, int nmeta) {
  return guard([&] {
    std::unordered_map<std::string, mx::array> tensors;
    auto tensor_names = split_nul(names, n);
    for (int i = 0; i < n; ++i) tensors.emplace(tensor_names[i], arrays[i]->value);
    std::unordered_map<std::string, std::string> meta;
    if (nmeta > 0) {
      auto keys = split_nul(meta_keys, nmeta);
      auto values = split_nul(meta_values, nmeta);
      for (int i = 0; i < nmeta; ++i) meta.emplace(keys[i], values[i]);
    }
    mx::save_safetensors(std::string(path), tensors, meta);
    return 0;
  });
}

}  // extern "C"
