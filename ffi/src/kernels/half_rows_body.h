// Rows of fp32 activations against half-precision weight rows (decode steps of an unquantized
// model, or layers a GGUF stores in a type we dequantize): each weight vector is widened as it
// is loaded (F16C's vcvtph2ps for float16, a shift for bfloat16) and multiplied in fp32, so the
// weights are read once, at their own two bytes an element, and never converted into a buffer.
// Four weight rows at a time, four independent sums, so that one activation row keeps the loads
// busy. The including file defines ATTENTION_VECTOR_BYTES, HALF_ROWS_FN and HALF_WIDEN_FN
// (half_rows_<isa>.cpp).
#include "attention_vector.h"
#include "half_rows_kernel.h"

namespace kernels {
namespace {

constexpr int kTile = 4;

// The K-element dot products of x with `count` (<= kTile) weight rows, into out[0, count).
template <class T>
inline void dots(const float* x, const T* w, int64_t w_stride, int count, int K, float* out) {
  vf sum[kTile] = {};
  int k = 0;
  for (; k + kLanes <= K; k += kLanes) {
    const vf xv = load(x + k);
    for (int j = 0; j < kTile; ++j)
      if (j < count) sum[j] += load(w + j * w_stride + k) * xv;
  }
  for (int j = 0; j < count; ++j) {
    float total = pairwise_sum(sum[j]);
    for (int t = k; t < K; ++t) total += x[t] * to_float(w[j * w_stride + t]);
    out[j] = total;
  }
}

template <class T>
void rows(const float* x, int M, int K, const T* w, int64_t w_stride, int n0, int n1, float* y, int64_t ldy) {
  float out[kTile];
  for (int n = n0; n < n1; n += kTile) {
    const int count = n1 - n < kTile ? n1 - n : kTile;
    for (int m = 0; m < M; ++m) {
      dots(x + int64_t(m) * K, w + n * w_stride, w_stride, count, K, out);
      for (int j = 0; j < count; ++j) y[m * ldy + n + j] = out[j];
    }
  }
}

template <class T>
void widen(const T* w, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) store(out + i, load(w + i));
  for (; i < n; ++i) out[i] = to_float(w[i]);
}

}  // namespace

void HALF_WIDEN_FN(Element type, const void* w, int64_t n, float* out) {
  if (type == Element::f16) widen(static_cast<const _Float16*>(w), n, out);
  else widen(static_cast<const BF16*>(w), n, out);
}

void HALF_ROWS_FN(Element type, const float* x, int M, int K, const void* w, int64_t w_stride, int n0, int n1,
                  float* y, int64_t ldy) {
  if (type == Element::f16) rows(x, M, K, static_cast<const _Float16*>(w), w_stride, n0, n1, y, ldy);
  else rows(x, M, K, static_cast<const BF16*>(w), w_stride, n0, n1, y, ldy);
}

}  // namespace kernels
