// Scattered page copies between slot pools with the GPU gather/scatter kernels of kernels/
// (pagoda_kernels_cuda): the fast path where the pages are slots of pools, which is how Pagoda's
// tiers and workers' KV pools are laid out. Built with CUDA when the kernels are built.
//
// Measured on the H200 (bench/RESULTS.md): gathering 1024 scattered 16-64 KiB pages from a pinned
// host pool runs at 0.91-0.94x of one contiguous cudaMemcpy of the same bytes, where the batched
// DMA of gpu_copy.h reaches 0.13-0.72x.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

namespace pagoda {

// Slot s of a pool is at base + s * stride_bytes. The memory may be device memory of this GPU, of
// a peer GPU (peer access enabled, or a CudaIpcMapping), or pinned / registered host memory.
struct PagePool {
  void* base = nullptr;
  int64_t slots = 0;
  int64_t stride_bytes = 0;
};

// Copies slot src_slots[i] of `src` to slot dst_slots[i] of `dst`, page_bytes each, i < n, on
// `stream`. With both slot lists: ONE kernel reading each page once from `src` and writing it once
// to `dst` (kernels::gpu::CopyPoolToPool; `staging` is not touched, the pages must not overlap).
// Pass dst_slots = nullptr to gather the pages contiguous into `staging`; src_slots = nullptr to
// scatter them from `staging` (n * page_bytes of device or pinned host memory, needed in those two
// cases). The slot arrays are int32 in device memory; destination slots must not repeat.
// InvalidArgument for bad shapes (nothing enqueued); slot values are not range-checked on the host
// (they live on the GPU): callers validate them when they build them.
absl::Status CopyPoolPagesAsync(const PagePool& src, const int32_t* src_slots, const PagePool& dst,
                                const int32_t* dst_slots, int32_t n, size_t page_bytes,
                                void* staging, cudaStream_t stream);

}  // namespace pagoda
