#include "checksum.h"

namespace pagoda {
namespace {

struct Variant {
  uint64_t (*xxh3)(const void*, size_t);
  uint64_t (*copy)(uint8_t*, const uint8_t*, size_t);
  const char* name;
};

Variant Pick() {
  using namespace checksum_internal;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return {Xxh3Avx512, CopyAndChecksumAvx512, "avx512"};
  if (__builtin_cpu_supports("avx2")) return {Xxh3Avx2, CopyAndChecksumAvx2, "avx2"};
  return {Xxh3Generic, CopyAndChecksumGeneric, "generic"};
}

const Variant& Chosen() {
  static const Variant v = Pick();
  return v;
}

}  // namespace

uint64_t Xxh3(const void* data, size_t n) { return Chosen().xxh3(data, n); }
uint64_t CopyAndChecksum(uint8_t* dst, const uint8_t* src, size_t n) {
  return Chosen().copy(dst, src, n);
}
const char* ChecksumVariant() { return Chosen().name; }

}  // namespace pagoda
