// A GGUF's tensors of the types MLX's reader refuses or reads wrong, read from the file into what
// the loader keeps (src/models/gguf-tensors.ts): MLX's affine layout for the types whose values
// are code · scale + bias in groups of 32 (Q4_K, Q5_0, Q5_1, Q5_K) or, for our CPU kernels alone,
// of 16 (Q6_K), and float values for the others (Q3_K, IQ4_NL, IQ4_XS), as llama.cpp's
// dequantize_row_* compute them. Here rather than in
// TypeScript: a 7B Q4_K_M file holds about 4 GB of such blocks, which a JavaScript loop read at
// under 0.2 GB/s (0.8-0.9 GB/s here), through buffers of its own beside MLX's.
//
// Every value is computed in double and rounded to float once, as the TypeScript readers did
// (and exactly: a scale is a float16 times a 6-bit integer, a value that times a code of at most
// 8 bits).
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>

#include "common.h"

namespace {

using Bytes = const uint8_t*;

double half(Bytes p) {
  mx::float16_t h;
  std::memcpy(&h, p, 2);
  return static_cast<float>(h);
}

uint32_t u32(Bytes p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// ---- kept quantized: codes, a scale and a bias per group (of 32, or Q6_K's 16) ----

struct Affine {
  uint8_t* codes;
  float* scales;
  float* biases;
};

// 5-bit codes at p: 32 high bits, then 16 bytes of low nibbles (codes j and j + 16).
void five_bit_codes(Bytes p, uint8_t* codes) {
  const uint32_t qh = u32(p);
  for (int j = 0; j < 16; ++j) {
    const uint8_t q = p[4 + j];
    codes[j] = (q & 0x0f) | (((qh >> j) << 4) & 0x10);
    codes[j + 16] = (q >> 4) | ((qh >> (j + 12)) & 0x10);
  }
}

// Q5_0: d: f16, then 5-bit codes; x = d · q − 16 · d.
void q5_0(Bytes p, const Affine& out) {
  const double d = half(p);
  five_bit_codes(p + 2, out.codes);
  out.scales[0] = static_cast<float>(d);
  out.biases[0] = static_cast<float>(-16 * d);
}

// Q5_1: d, m: f16, then 5-bit codes; x = d · q + m.
void q5_1(Bytes p, const Affine& out) {
  five_bit_codes(p + 4, out.codes);
  out.scales[0] = static_cast<float>(half(p));
  out.biases[0] = static_cast<float>(half(p + 2));
}

// Q4_K / Q5_K: d, dmin: f16; 12 bytes of 6-bit scales and mins for 8 groups of 32: x = d · scale ·
// q − dmin · min. Group 2i's codes are the low nibbles of 32 bytes, group 2i + 1's their high ones;
// Q5_K's fifth bit of code l of group g is bit g of byte l of `high_bits`.
void k_quant_codes(Bytes p, Bytes nibbles, const Affine& out, Bytes high_bits) {
  const double d = half(p), dmin = half(p + 2);
  const Bytes packed = p + 4;
  for (int g = 0; g < 8; ++g) {
    // get_scale_min_k4: the first four groups' values sit in the low 6 bits, the others are split.
    const int scale = g < 4 ? packed[g] & 63 : (packed[g + 4] & 0xf) | ((packed[g - 4] >> 6) << 4);
    const int min = g < 4 ? packed[g + 4] & 63 : (packed[g + 4] >> 4) | ((packed[g] >> 6) << 4);
    out.scales[g] = static_cast<float>(d * scale);
    out.biases[g] = static_cast<float>(-dmin * min);
    const Bytes q = nibbles + (g >> 1) * 32;
    const int shift = 4 * (g & 1);
    for (int l = 0; l < 32; ++l) {
      const int high = high_bits ? ((high_bits[l] >> g) & 1) << 4 : 0;
      out.codes[g * 32 + l] = static_cast<uint8_t>(((q[l] >> shift) & 0xf) | high);
    }
  }
}

void q4_k(Bytes p, const Affine& out) { k_quant_codes(p, p + 16, out, nullptr); }
void q5_k(Bytes p, const Affine& out) { k_quant_codes(p, p + 48, out, p + 16); }

// Q6_K: 128 bytes of low nibbles, 64 of high bit pairs, 16 int8 scales, d: f16; x = d · scale ·
// (q − 32), a scale per 16 values. Of each half of 128 values, value 32j + l (j < 4, l < 32) takes
// the low (j < 2) or high nibble of low byte l + 32 (j & 1) and bits 2j of high byte l. Held as
// 8-bit codes q + 96 with the bias −128 · scale, so that the weights are symmetric (bias = −2^7 ·
// scale: a kernel need not read the biases) and code · scale + bias is still d · scale · (q − 32).
void q6_k(Bytes p, const Affine& out) {
  const Bytes low = p, high = p + 128;
  const auto* scales = reinterpret_cast<const int8_t*>(p + 192);
  const double d = half(p + 208);
  for (int g = 0; g < 16; ++g) {
    out.scales[g] = static_cast<float>(d * scales[g]);
    out.biases[g] = -128.0f * out.scales[g];
  }
  for (int h = 0; h < 2; ++h)
    for (int j = 0; j < 4; ++j)
      for (int l = 0; l < 32; ++l) {
        const int nibble = (low[64 * h + l + 32 * (j & 1)] >> (4 * (j >> 1))) & 0xf;
        const int pair = (high[32 * h + l] >> (2 * j)) & 3;
        out.codes[128 * h + 32 * j + l] = static_cast<uint8_t>((nibble | (pair << 4)) + 96);
      }
}

// ---- dequantized: floats ----

// Q3_K: 32 bytes of high bits (hmask), 64 bytes of 2-bit lows, 12 bytes packing 16 6-bit scales,
// d: f16. x = d · (scale − 32) · (low − (high bit ? 0 : 4)), 16 values per scale.
void q3_k(Bytes p, float* out) {
  const Bytes hmask = p, qs = p + 32, packed = p + 96;
  const double d = half(p + 108);
  // Scale j: low 4 bits from byte j (its high nibble for j ≥ 8), high 2 bits from byte 8 + j % 4.
  const auto scale = [&](int j) {
    const int low = j < 8 ? packed[j] & 0xf : packed[j - 8] >> 4;
    return (low | (((packed[8 + j % 4] >> (2 * (j >> 2))) & 3) << 4)) - 32;
  };
  int j = 0;
  for (int half_block = 0; half_block < 2; ++half_block) {
    for (int shift = 0; shift < 8; shift += 2) {
      const int bit = 1 << (half_block * 4 + shift / 2);
      for (int offset : {0, 16}) {
        const double dl = d * scale(j);
        for (int l = 0; l < 16; ++l) {
          const int low = (qs[half_block * 32 + offset + l] >> shift) & 3;
          const int high = hmask[offset + l] & bit ? 0 : 4;
          out[j * 16 + l] = static_cast<float>(dl * (low - high));
        }
        ++j;
      }
    }
  }
}

// The IQ4 codebook: a 4-bit index → a signed 8-bit level.
constexpr int kIq4Values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// 32 values from 16 bytes of nibbles (low nibbles first, then high ones), times `scale`.
void iq4_group(Bytes p, float* out, double scale) {
  for (int j = 0; j < 16; ++j) {
    out[j] = static_cast<float>(scale * kIq4Values[p[j] & 0xf]);
    out[j + 16] = static_cast<float>(scale * kIq4Values[p[j] >> 4]);
  }
}

// IQ4_NL: d: f16, then 16 bytes of nibbles.
void iq4_nl(Bytes p, float* out) { iq4_group(p + 2, out, half(p)); }

// IQ4_XS: d: f16, 8 groups of 32 with 6-bit scales (2 high bits in a u16, 4 low ones in 4 bytes),
// 128 bytes of nibbles.
void iq4_xs(Bytes p, float* out) {
  const double d = half(p);
  uint16_t high;
  std::memcpy(&high, p + 2, 2);
  for (int group = 0; group < 8; ++group) {
    const int low = (p[4 + (group >> 1)] >> (4 * (group & 1))) & 0xf;
    const int scale = (low | (((high >> (2 * group)) & 3) << 4)) - 32;
    iq4_group(p + 8 + group * 16, out + group * 32, d * scale);
  }
}

template <class Read>
struct Layout {
  int block_bytes, block_elements;
  Read read;
  // The width an affine type's codes are held at: Q4_K's 4 bits, the 5- and 6-bit codes in 8, and
  // the values a scale covers (unused by the float types).
  int bits = 0;
  int group = 32;
};

using AffineRead = void (*)(Bytes, const Affine&);
using FloatRead = void (*)(Bytes, float*);

Layout<AffineRead> affine_layout(const std::string& type) {
  if (type == "Q5_0") return {22, 32, q5_0, 8};
  if (type == "Q5_1") return {24, 32, q5_1, 8};
  if (type == "Q4_K") return {144, 256, q4_k, 4};
  if (type == "Q5_K") return {176, 256, q5_k, 8};
  if (type == "Q6_K") return {210, 256, q6_k, 8, 16};
  throw std::invalid_argument("no affine reader for GGUF type " + type);
}

Layout<FloatRead> float_layout(const std::string& type) {
  if (type == "Q3_K") return {110, 256, q3_k};
  if (type == "IQ4_NL") return {18, 32, iq4_nl};
  if (type == "IQ4_XS") return {136, 256, iq4_xs};
  throw std::invalid_argument("no dequantizer for GGUF type " + type);
}

// Values in a tensor of `shape`; its last dimension is the rows' length (whole groups of 32).
uint64_t values_of(const mx::Shape& shape) {
  uint64_t n = 1;
  for (int d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

// Hands each block of the `bytes` at `offset` of the file to use(block, index), reading a few MiB
// of whole blocks at a time: a tensor's raw bytes are never all in memory beside its arrays.
template <class Use>
void for_each_block(const char* path, uint64_t offset, uint64_t bytes, int block_bytes, Use use) {
  std::FILE* file = std::fopen(path, "rb");
  if (!file) throw std::runtime_error(std::string("cannot open ") + path + ": " + std::strerror(errno));
  const uint64_t per_piece = std::max<uint64_t>(1, std::min<uint64_t>((4u << 20) / block_bytes, bytes / block_bytes));
  const std::unique_ptr<uint8_t[]> piece(new uint8_t[per_piece * block_bytes]);  // not zeroed: read over
  try {
    if (fseeko(file, static_cast<off_t>(offset), SEEK_SET) != 0) throw std::runtime_error("cannot seek in the file");
    const uint64_t blocks = bytes / block_bytes;
    for (uint64_t first = 0; first < blocks; first += per_piece) {
      const uint64_t count = std::min(per_piece, blocks - first);
      if (std::fread(piece.get(), block_bytes, count, file) != count)
        throw std::runtime_error("the file ends inside a tensor");
      for (uint64_t b = 0; b < count; ++b) use(piece.get() + b * block_bytes, first + b);
    }
  } catch (...) {
    std::fclose(file);
    throw;
  }
  std::fclose(file);
}

template <class Read>
void check_blocks(const Layout<Read>& layout, uint64_t bytes, const mx::Shape& shape, const std::string& type) {
  if (bytes % layout.block_bytes != 0 || shape.empty() || shape.back() % 32 != 0 ||
      bytes / layout.block_bytes * layout.block_elements != values_of(shape))
    throw std::invalid_argument(type + " data of " + std::to_string(bytes) + " bytes does not fit its shape");
}

// MLX memory for `count` T, filled here and then handed to an array as it is (no copy).
template <class T>
struct Filling {
  explicit Filling(uint64_t count)
      : memory(mx::allocator::malloc(std::max<uint64_t>(1, count) * sizeof(T))),
        data(static_cast<T*>(memory.buffer().raw_ptr())) {}

  mx::array array_of(const mx::Shape& shape, mx::Dtype dtype) { return mx::array(std::move(memory), shape, dtype); }

  mx::allocator::Data memory;
  T* data;
};

}  // namespace

int mlxs_gguf_read_affine(mlxs_array** outs, const char* path, uint64_t offset, uint64_t bytes, const char* type,
                          const int32_t* dims, int ndim) {
  return shim::guard([&] {
    const auto layout = affine_layout(type);
    const mx::Shape shape = shim::shape_of(dims, ndim);
    check_blocks(layout, bytes, shape, type);
    mx::Shape packed_shape = shape, group_shape = shape;
    packed_shape.back() = shape.back() * layout.bits / 32;
    group_shape.back() = shape.back() / layout.group;
    const uint64_t values = values_of(shape);
    Filling<uint32_t> codes(values * layout.bits / 32);
    Filling<float> scales(values / layout.group), biases(values / layout.group);
    const int groups = layout.block_elements / layout.group, packed_bytes = layout.block_elements * layout.bits / 8;
    uint8_t* const packed = reinterpret_cast<uint8_t*>(codes.data);
    for_each_block(path, offset, bytes, layout.block_bytes, [&](Bytes block, uint64_t b) {
      uint8_t block_codes[256];
      layout.read(block, {block_codes, scales.data + b * groups, biases.data + b * groups});
      uint8_t* to = packed + b * packed_bytes;
      if (layout.bits == 8) std::memcpy(to, block_codes, packed_bytes);
      // MLX's 4-bit layout: byte k holds code 2k in its low nibble and 2k + 1 in its high one.
      else
        for (int k = 0; k < packed_bytes; ++k) to[k] = block_codes[2 * k] | (block_codes[2 * k + 1] << 4);
    });
    return shim::put_all(outs, {codes.array_of(packed_shape, mx::uint32), scales.array_of(group_shape, mx::float32),
                                biases.array_of(group_shape, mx::float32)});
  });
}

int mlxs_gguf_read_dequantized(mlxs_array** out, const char* path, uint64_t offset, uint64_t bytes, const char* type,
                               const int32_t* dims, int ndim) {
  return shim::guard([&] {
    const auto layout = float_layout(type);
    const mx::Shape shape = shim::shape_of(dims, ndim);
    check_blocks(layout, bytes, shape, type);
    Filling<float> values(values_of(shape));
    for_each_block(path, offset, bytes, layout.block_bytes,
                   [&](Bytes block, uint64_t b) { layout.read(block, values.data + b * layout.block_elements); });
    return shim::put(out, values.array_of(shape, mx::float32));
  });
}
