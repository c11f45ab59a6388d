// Deterministic, non-periodic byte patterns for transport tests: any misplaced, stale or torn byte
// shows up as a mismatch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace pagoda::testing {

inline uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// The byte at absolute offset `off` of the pattern named `seed`.
inline uint8_t PatternByte(uint64_t seed, uint64_t off) {
  return static_cast<uint8_t>(SplitMix64(seed * 0x100000001b3ULL ^ (off / 8)) >> (8 * (off % 8)));
}

// Fills buf with pattern `seed` starting at absolute offset `off`.
inline void FillPattern(void* buf, size_t len, uint64_t seed, uint64_t off) {
  auto* p = static_cast<uint8_t*>(buf);
  for (size_t i = 0; i < len; ++i) p[i] = PatternByte(seed, off + i);
}

// Index of the first byte that differs from the pattern, or `len` when all match.
inline size_t FirstMismatch(const void* buf, size_t len, uint64_t seed, uint64_t off) {
  const auto* p = static_cast<const uint8_t*>(buf);
  for (size_t i = 0; i < len; ++i) {
    if (p[i] != PatternByte(seed, off + i)) return i;
  }
  return len;
}

}  // namespace pagoda::testing
