// Fast host conversion of stored rows to float for the CPU references: the dtype branch is taken
// once per row, bf16 is a shift the compiler vectorizes, fp16 goes through a 65536-entry table
// built once from HalfToFloat (so results are bit-identical to dtype.h's converters).
#ifndef PAGODA_KERNELS_SRC_CONVERT_H_
#define PAGODA_KERNELS_SRC_CONVERT_H_

#include <cstdint>
#include <vector>

#include "pagoda/kernels/dtype.h"

namespace pagoda::kernels::internal {

inline const float* HalfTable() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t i = 0; i < 65536; ++i) t[i] = HalfToFloat(static_cast<uint16_t>(i));
    return t;
  }();
  return table.data();
}

// dst[i] = ToFloat(src[i], t) * scale for i < n.
inline void RowToFloat(const uint16_t* src, int32_t n, DType t, float* dst, float scale = 1.f) {
  if (t == DType::kBFloat16) {
    for (int32_t i = 0; i < n; ++i)
      dst[i] = BitsToFloat(static_cast<uint32_t>(src[i]) << 16) * scale;
  } else {
    const float* table = HalfTable();
    for (int32_t i = 0; i < n; ++i) dst[i] = table[src[i]] * scale;
  }
}

// Reductions with 8 independent float accumulators: the compiler can vectorize them (a single
// running sum is one long dependency chain), and the result is still a float-accumulated sum.
inline float Dot(const float* a, const float* b, int32_t n) {
  float acc[8] = {};
  int32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  }
  for (; i < n; ++i) acc[0] += a[i] * b[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// sum_i max(q_i * hi_i, q_i * lo_i): the Quest bound.
inline float QuestBound(const float* q, const float* hi, const float* lo, int32_t n) {
  float acc[8] = {};
  int32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) {
      const float a = q[i + j] * hi[i + j], b = q[i + j] * lo[i + j];
      acc[j] += a > b ? a : b;
    }
  }
  for (; i < n; ++i) {
    const float a = q[i] * hi[i], b = q[i] * lo[i];
    acc[0] += a > b ? a : b;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// sum_i (a_i - b_i)^2.
inline float SquaredDistance(const float* a, const float* b, int32_t n) {
  float acc[8] = {};
  int32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) {
      const float e = a[i + j] - b[i + j];
      acc[j] += e * e;
    }
  }
  for (; i < n; ++i) {
    const float e = a[i] - b[i];
    acc[0] += e * e;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

}  // namespace pagoda::kernels::internal

#endif  // PAGODA_KERNELS_SRC_CONVERT_H_
