// Batched page copies between pinned host memory and GPUs, and between GPUs: one submission for a
// whole batch of scattered pages (the driver's batched DMA), never one cudaMemcpy per page.
// Built only with CUDA (library pagoda_transport_cuda).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace pagoda {

// One page: `page_bytes` from src to dst. Either side may be pinned host memory (cudaHostAlloc /
// cudaHostRegister) or device memory of any GPU (another GPU needs peer access, see cuda_ipc.h).
struct PageCopy {
  void* dst = nullptr;
  const void* src = nullptr;
};

// Enqueues every copy on `stream` as one batched DMA (cudaMemcpyBatchAsync); runs of pages that
// are adjacent on both sides are merged first. Completes in stream order; the pages of one batch
// must not overlap each other. InvalidArgument (nothing enqueued) for an empty batch, a null
// pointer, page_bytes == 0, or the legacy default stream (which batched copies do not support:
// pass a created stream or cudaStreamPerThread). Other failures are the CUDA error.
absl::Status CopyPagesAsync(absl::Span<const PageCopy> copies, size_t page_bytes,
                            cudaStream_t stream);

// The same copies as one cudaMemcpyAsync per page: the baseline CopyPagesAsync is measured
// against (bench/transport), and a fallback where batched copies are unsupported.
absl::Status CopyPagesOneByOne(absl::Span<const PageCopy> copies, size_t page_bytes,
                               cudaStream_t stream);

}  // namespace pagoda
