// Helpers for the kernel tests: random paged pools and float64 views of stored values.
#ifndef PAGODA_KERNELS_SRC_TEST_UTIL_H_
#define PAGODA_KERNELS_SRC_TEST_UTIL_H_

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "pagoda/kernels/params.h"

namespace pagoda::kernels::testing {

inline std::vector<uint16_t> RandomValues(std::mt19937& rng, size_t n, DType t, float stddev = 1.f,
                                          float mean = 0.f) {
  std::normal_distribution<float> normal(mean, stddev);
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = FromFloat(normal(rng), t);
  return v;
}

// A pool in the store's packed page layout: per page K [heads, page_size, dim] then V.
struct Pool {
  DType dtype;
  int32_t pages, page_size, heads, dim;
  std::vector<uint16_t> data;
  PagedKV kv() const { return PackedPagedKV(dtype, pages, page_size, heads, dim, data.data()); }
  size_t page_elems() const { return size_t{2} * heads * page_size * dim; }
};

inline Pool RandomPool(std::mt19937& rng, DType t, int32_t pages, int32_t page_size, int32_t heads,
                       int32_t dim, float stddev = 1.f) {
  Pool p{t, pages, page_size, heads, dim, {}};
  p.data = RandomValues(rng, p.page_elems() * pages, t, stddev);
  return p;
}

inline double D(uint16_t v, DType t) { return static_cast<double>(ToFloat(v, t)); }

// ||got - want|| / ||want|| over two equally long vectors.
inline double RelErr(const std::vector<double>& want, const std::vector<double>& got) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

// Unit roundoff of a storage type.
inline double Eps(DType t) { return t == DType::kFloat16 ? 1.0 / 2048 : 1.0 / 256; }

}  // namespace pagoda::kernels::testing

#endif  // PAGODA_KERNELS_SRC_TEST_UTIL_H_
