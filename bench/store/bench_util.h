// Small helpers shared by the store benchmarks: clocks, percentiles, medians.
#ifndef PAGODA_BENCH_STORE_BENCH_UTIL_H_
#define PAGODA_BENCH_STORE_BENCH_UTIL_H_

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

namespace pagoda::bench {

inline double NowSec() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// q in [0, 1]; sorts a copy.
inline double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(q * (v.size() - 1) + 0.5));
  return v[i];
}

inline double Median(std::vector<double> v) { return Percentile(std::move(v), 0.5); }

// Fills a buffer with non-trivial bytes (so no layer can cheat on zeros).
inline void FillBytes(uint8_t* p, size_t n, uint64_t seed) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ULL + 1;
  for (size_t i = 0; i + 8 <= n; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    __builtin_memcpy(p + i, &x, 8);
  }
}

}  // namespace pagoda::bench

#endif  // PAGODA_BENCH_STORE_BENCH_UTIL_H_
