// Verified head-page gather (HeadGatherParams): one block per head-page. Each thread copies
// 16-byte words from the source (the pinned, mapped host arena: reads cross PCIe) into the slot,
// re-reads nothing, and adds the checksum terms of the 8-byte words it wrote; a block reduction
// compares the sum with the expected checksum and writes the verdict.
#include "common.cuh"
#include "pagoda/kernels/cuda.h"
#include "pagoda/kernels/head_checksum.h"
#include "validate.h"

namespace pagoda::kernels::gpu {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    HeadGatherKernel(const __grid_constant__ HeadGatherParams p) {
  const int i = blockIdx.x;
  const int64_t half_words = p.half_bytes / 16;  // 16-byte words per half
  uint8_t* slot =
      p.pool + (int64_t{p.dst_head[i]} * p.pool_slots + p.dst_slot[i]) * 2 * p.half_bytes;
  uint64_t sum = 0;
  for (int64_t w = threadIdx.x; w < 2 * half_words; w += kThreads) {
    const bool is_v = w >= half_words;
    const int64_t in_half = is_v ? w - half_words : w;
    const uint4 x =
        *reinterpret_cast<const uint4*>(p.src + (is_v ? p.src_v[i] : p.src_k[i]) + in_half * 16);
    *reinterpret_cast<uint4*>(slot + w * 16) = x;
    sum += internal::ChecksumTerms16(x, w);  // index across the head-page: K words, then V
  }
  const uint64_t total = internal::BlockSum<kThreads>(sum);
  if (threadIdx.x == 0) p.bad[i] = total == p.expected[i] ? 0 : 1;
}

}  // namespace

absl::Status GatherHeadPages(const HeadGatherParams& p, cudaStream_t stream) {
  if (auto s = kernels::internal::ValidateHeadGatherShape(p); !s.ok()) return s;
  if (p.num_copies == 0) return absl::OkStatus();
  if ((reinterpret_cast<uintptr_t>(p.src) | reinterpret_cast<uintptr_t>(p.pool)) & 15u) {
    return absl::InvalidArgumentError("head gather: source and pool must be 16-byte aligned");
  }
  HeadGatherKernel<<<p.num_copies, kThreads, 0, stream>>>(p);
  return internal::LaunchStatus("head gather launch");
}

}  // namespace pagoda::kernels::gpu
