// Internal test helper: synthetic sequences with a planted needle.
#ifndef PAGODA_RETRIEVER_SRC_TEST_DATA_H_
#define PAGODA_RETRIEVER_SRC_TEST_DATA_H_

#include <cstdint>
#include <random>
#include <vector>

#include "pagoda/kernels/dtype.h"

namespace pagoda::retriever::test_data {

inline uint16_t Half(float x) { return kernels::FromFloat(x, kernels::DType::kFloat16); }

// Keys [kv_heads, tokens, dim] of small random noise, except tokens [needle, needle + len) which
// point along a per-head direction; Query() points every query head of KV head h the same way.
struct NeedleData {
  int kv_heads = 4, q_heads = 12, dim = 64;
  int64_t tokens = 0;
  std::vector<float> keys;        // [kv_heads, tokens, dim]
  std::vector<float> directions;  // [kv_heads, dim], unit vectors

  NeedleData(int64_t n, int64_t needle, int len, uint32_t seed) : tokens(n) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> noise(0.f, 0.3f);
    keys.resize(static_cast<size_t>(kv_heads) * n * dim);
    for (float& k : keys) k = noise(rng);
    directions.resize(static_cast<size_t>(kv_heads) * dim);
    for (int h = 0; h < kv_heads; ++h) {
      float norm = 0;
      for (int d = 0; d < dim; ++d) {
        float& x = directions[h * dim + d];
        x = noise(rng);
        norm += x * x;
      }
      for (int d = 0; d < dim; ++d) directions[h * dim + d] /= std::sqrt(norm);
      for (int64_t t = needle; t < needle + len; ++t) {
        for (int d = 0; d < dim; ++d) {
          keys[(h * n + t) * dim + d] = 4.f * directions[h * dim + d] + 0.05f * noise(rng);
        }
      }
    }
  }

  // Keys of tokens [begin, end) as fp16, [kv_heads, end - begin, dim].
  std::vector<uint16_t> Keys(int64_t begin, int64_t end) const {
    std::vector<uint16_t> out;
    for (int h = 0; h < kv_heads; ++h) {
      for (int64_t t = begin; t < end; ++t) {
        for (int d = 0; d < dim; ++d) out.push_back(Half(keys[(h * tokens + t) * dim + d]));
      }
    }
    return out;
  }

  // A query [q_heads, dim] aimed at the needle with strength `scale` (plus a tilt per step).
  std::vector<uint16_t> Query(float scale, float tilt = 0.f) const {
    std::vector<uint16_t> q;
    const int group = q_heads / kv_heads;
    for (int hq = 0; hq < q_heads; ++hq) {
      const int h = hq / group;
      for (int d = 0; d < dim; ++d) {
        q.push_back(Half(scale * directions[h * dim + d] + tilt * ((d % 7) - 3) * 0.1f));
      }
    }
    return q;
  }
};

}  // namespace pagoda::retriever::test_data

#endif  // PAGODA_RETRIEVER_SRC_TEST_DATA_H_
