// Device helpers shared by the CUDA kernels: 16-byte loads of 8 fp16/bf16 values, fast exp2,
// warp and block reductions, head-page checksum terms, and the one place CUDA errors become
// absl::Status.
#ifndef PAGODA_KERNELS_SRC_CUDA_COMMON_CUH_
#define PAGODA_KERNELS_SRC_CUDA_COMMON_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "pagoda/kernels/dtype.h"
#include "pagoda/kernels/head_checksum.h"

namespace pagoda::kernels::gpu::internal {

inline absl::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(err)));
}

// Checks the launch just enqueued.
inline absl::Status LaunchStatus(const char* what) { return CudaStatus(cudaGetLastError(), what); }

// Eight 16-bit values held in 16 bytes, converted to float.
template <bool kBf16>
__device__ __forceinline__ void Unpack8(const uint4& raw, float (&out)[8]) {
  const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (kBf16) {
      out[2 * i] = __uint_as_float(w[i] << 16);
      out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    } else {
      __half2 h;
      memcpy(&h, &w[i], 4);
      const float2 f = __half22float2(h);
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  }
}

template <bool kBf16>
__device__ __forceinline__ uint16_t Pack1(float f) {
  if constexpr (kBf16) {
    const __nv_bfloat16 b = __float2bfloat16_rn(f);
    return *reinterpret_cast<const uint16_t*>(&b);
  } else {
    const __half h = __float2half_rn(f);
    return *reinterpret_cast<const uint16_t*>(&h);
  }
}

template <bool kBf16>
__device__ __forceinline__ float Unpack1(uint16_t v) {
  return kBf16 ? __uint_as_float(static_cast<uint32_t>(v) << 16)
               : __half2float(__ushort_as_half(v));
}

// Streaming 16-byte load that skips L1 (each KV byte is read once per step).
__device__ __forceinline__ uint4 LoadStream(const uint16_t* p) {
  return __ldcs(reinterpret_cast<const uint4*>(p));
}

// Asynchronous 16-byte global -> shared copy (L2 only), grouped by commit, awaited by count.
__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(addr), "l"(gmem));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

__device__ __forceinline__ float FastExp2(float x) {
  float y;
  asm volatile("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Float key whose unsigned order is the float order (NaN must be mapped away first).
__device__ __forceinline__ uint32_t OrderedKey(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The HeadPageChecksum terms (head_checksum.h) of one 16-byte word at 16-byte index w of a
// head-page: its two 8-byte words, indices 2w and 2w + 1.
__device__ __forceinline__ uint64_t ChecksumTerms16(const uint4& x, int64_t w) {
  const uint64_t lo = (uint64_t{x.y} << 32) | x.x, hi = (uint64_t{x.w} << 32) | x.z;
  return HeadChecksumTerm(lo, static_cast<uint64_t>(2 * w)) +
         HeadChecksumTerm(hi, static_cast<uint64_t>(2 * w + 1));
}

// The sum of every thread's `v` over a block of kThreads (a multiple of 32); valid in thread 0.
template <int kThreads>
__device__ __forceinline__ uint64_t BlockSum(uint64_t v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  __shared__ uint64_t warp_sums[kThreads / 32];
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = v;
  __syncthreads();
  uint64_t total = 0;
  if (threadIdx.x == 0) {
    for (int k = 0; k < kThreads / 32; ++k) total += warp_sums[k];
  }
  return total;
}

}  // namespace pagoda::kernels::gpu::internal

#endif  // PAGODA_KERNELS_SRC_CUDA_COMMON_CUH_
