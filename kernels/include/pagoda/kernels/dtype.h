// Storage types of KV pages and their float conversions, usable on host and device.
//
// Pages hold fp16 or bf16 values as raw 16-bit patterns (uint16_t); all arithmetic is done in
// float. The converters round to nearest even, keep infinities and NaN, and handle fp16 subnormals,
// so the CPU references and the CUDA kernels see bit-identical inputs.
#ifndef PAGODA_KERNELS_DTYPE_H_
#define PAGODA_KERNELS_DTYPE_H_

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define PAGODA_HD __host__ __device__ __forceinline__
#else
#define PAGODA_HD inline
#endif

namespace pagoda::kernels {

// Element type of a page, a query or an output.
enum class DType : uint8_t {
  kFloat16 = 0,   // IEEE binary16
  kBFloat16 = 1,  // bfloat16 (the top half of a binary32)
};

inline const char* DTypeName(DType t) { return t == DType::kFloat16 ? "fp16" : "bf16"; }

PAGODA_HD float BitsToFloat(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

PAGODA_HD uint32_t FloatToBits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

PAGODA_HD float Bf16ToFloat(uint16_t b) { return BitsToFloat(static_cast<uint32_t>(b) << 16); }

PAGODA_HD uint16_t FloatToBf16(float f) {
  uint32_t u = FloatToBits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}

PAGODA_HD float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return BitsToFloat(sign | 0x7f800000u | (mant << 13));  // inf / NaN
  if (exp != 0) return BitsToFloat(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return BitsToFloat(sign);
  // Subnormal: value = mant * 2^-24, exact in float.
  const float v = static_cast<float>(mant) * 5.9604644775390625e-08f;
  return sign ? -v : v;
}

PAGODA_HD uint16_t FloatToHalf(float f) {
  const uint32_t u = FloatToBits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);   // NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to inf
  if (abs >= 0x38800000u) {                                              // normal half
    uint32_t r = abs - (112u << 23);
    r += 0xfffu + ((r >> 13) & 1u);
    return static_cast<uint16_t>(sign | (r >> 13));
  }
  if (abs < 0x33000000u) return sign;  // below half of the smallest subnormal
  // Subnormal half: shift the implicit-one mantissa right, rounding to nearest even.
  const uint32_t e = abs >> 23;
  const uint32_t m = (abs & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - e;  // in [14, 24]
  uint32_t q = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  return static_cast<uint16_t>(sign | q);
}

// Converts one stored element to float / float to storage.
PAGODA_HD float ToFloat(uint16_t v, DType t) {
  return t == DType::kFloat16 ? HalfToFloat(v) : Bf16ToFloat(v);
}
PAGODA_HD uint16_t FromFloat(float f, DType t) {
  return t == DType::kFloat16 ? FloatToHalf(f) : FloatToBf16(f);
}

}  // namespace pagoda::kernels

#endif  // PAGODA_KERNELS_DTYPE_H_
