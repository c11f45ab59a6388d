// Page checksums (XXH3-64, seed 0) with the widest vector unit the CPU has, chosen at run time.
// Every variant computes the same value: XXH3's output does not depend on the instruction set.
//
// Thread safety: pure functions.
#ifndef PAGODA_KVSTORE_CHECKSUM_H_
#define PAGODA_KVSTORE_CHECKSUM_H_

#include <cstddef>
#include <cstdint>

namespace pagoda {

// XXH3-64 of n bytes (== PageChecksum).
uint64_t Xxh3(const void* data, size_t n);
// Copies n bytes from src to dst and returns Xxh3 of them in one pass: each chunk is hashed right
// after it is copied, while it is still in cache.
uint64_t CopyAndChecksum(uint8_t* dst, const uint8_t* src, size_t n);
// Name of the variant in use ("avx512", "avx2" or "generic").
const char* ChecksumVariant();

namespace checksum_internal {
uint64_t Xxh3Generic(const void* data, size_t n);
uint64_t CopyAndChecksumGeneric(uint8_t* dst, const uint8_t* src, size_t n);
uint64_t Xxh3Avx2(const void* data, size_t n);
uint64_t CopyAndChecksumAvx2(uint8_t* dst, const uint8_t* src, size_t n);
uint64_t Xxh3Avx512(const void* data, size_t n);
uint64_t CopyAndChecksumAvx512(uint8_t* dst, const uint8_t* src, size_t n);
}  // namespace checksum_internal

}  // namespace pagoda

#endif  // PAGODA_KVSTORE_CHECKSUM_H_
