// Pool-to-pool page copy in one pass: each block moves one 16 KiB chunk (256 threads x 4 words of
// 16 bytes) of one page, issuing all of its loads before its stores so that reads over NVLink or
// PCIe have many requests in flight.
#include "common.cuh"
#include "pagoda/kernels/pool_copy_cuda.h"

namespace pagoda::kernels::gpu {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;

template <typename Word>
__global__ void __launch_bounds__(kThreads)
    PoolToPoolKernel(const __grid_constant__ PoolToPoolParams p, int64_t chunks_per_page) {
  const int64_t page = blockIdx.x / chunks_per_page;
  const int64_t chunk = blockIdx.x % chunks_per_page;
  const int64_t words = p.page_bytes / static_cast<int64_t>(sizeof(Word));
  const Word* src = reinterpret_cast<const Word*>(p.src + p.src_pages[page] * p.src_stride_bytes);
  Word* dst = reinterpret_cast<Word*>(p.dst + p.dst_pages[page] * p.dst_stride_bytes);
  const int64_t first = chunk * (kThreads * kUnroll) + threadIdx.x;
  Word w[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t at = first + u * kThreads;
    if (at < words) w[u] = src[at];
  }
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t at = first + u * kThreads;
    if (at < words) dst[at] = w[u];
  }
}

template <typename Word>
absl::Status Launch(const PoolToPoolParams& p, cudaStream_t stream) {
  const int64_t words = p.page_bytes / static_cast<int64_t>(sizeof(Word));
  const int64_t chunks = (words + kThreads * kUnroll - 1) / (kThreads * kUnroll);
  const int64_t blocks = chunks * p.num_pages;
  if (blocks > 0x7fffffffLL) {
    return absl::InvalidArgumentError("pool copy: too many pages x chunks for one launch");
  }
  PoolToPoolKernel<Word><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p, chunks);
  return internal::LaunchStatus("pool copy launch");
}

}  // namespace

absl::Status CopyPoolToPool(const PoolToPoolParams& p, cudaStream_t stream) {
  if (auto s = kernels::internal::ValidatePoolToPoolShape(p); !s.ok()) return s;
  if (p.num_pages == 0) return absl::OkStatus();
  const bool wide =
      ((reinterpret_cast<uintptr_t>(p.src) | reinterpret_cast<uintptr_t>(p.dst) |
        static_cast<uintptr_t>(p.src_stride_bytes) | static_cast<uintptr_t>(p.dst_stride_bytes) |
        static_cast<uintptr_t>(p.page_bytes)) &
       15u) == 0;
  return wide ? Launch<uint4>(p, stream) : Launch<uint8_t>(p, stream);
}

}  // namespace pagoda::kernels::gpu
