// Checksum of one head-page: the K and V of one KV head of one page, as the decode worker keeps
// them in its attention pool (a head-granular slot holds K [page_tokens, head_dim] then V).
//
// The store checksums whole pages (XXH3, kvstore/page.h); a decode worker fetches single heads of a
// page into its pool, so it needs a checksum per head-page that a GPU can compute while it copies:
// a sum over 8-byte words of a 64-bit finalizer of (word XOR a position tag). Every word is mixed
// with its position, so flipped bits, zeroed ranges and swapped words all change it; the sum makes
// it order-free to compute (each thread adds its words, a reduction adds the threads). It is an
// integrity check against torn or stale copies, not a cryptographic MAC.
//
// Header-only, C++17, callable from host and device code.
#ifndef PAGODA_KERNELS_HEAD_CHECKSUM_H_
#define PAGODA_KERNELS_HEAD_CHECKSUM_H_

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define PAGODA_HD __host__ __device__ __forceinline__
#else
#define PAGODA_HD inline
#endif

namespace pagoda::kernels {

// The contribution of word `i` (its index across the head-page: K words first, then V words).
PAGODA_HD uint64_t HeadChecksumTerm(uint64_t word, uint64_t i) {
  uint64_t x = word ^ (i * 0x9e3779b97f4a7c15ULL + 0x632be59bd9b4e019ULL);
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

// Checksum of a head-page whose K and V halves are `half_bytes` bytes each (a multiple of 8:
// page_tokens * head_dim * 2 always is). k and v may be anywhere (a store page or a pool slot).
inline uint64_t HeadPageChecksum(const void* k, const void* v, int64_t half_bytes) {
  const int64_t words = half_bytes / 8;
  uint64_t sum = 0;
  const unsigned char* halves[2] = {static_cast<const unsigned char*>(k),
                                    static_cast<const unsigned char*>(v)};
  for (int half = 0; half < 2; ++half) {
    for (int64_t w = 0; w < words; ++w) {
      uint64_t word;
      std::memcpy(&word, halves[half] + w * 8, 8);
      sum += HeadChecksumTerm(word, static_cast<uint64_t>(half * words + w));
    }
  }
  return sum;
}

}  // namespace pagoda::kernels

#undef PAGODA_HD

#endif  // PAGODA_KERNELS_HEAD_CHECKSUM_H_
