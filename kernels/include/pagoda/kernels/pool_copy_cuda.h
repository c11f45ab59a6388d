// GPU pool-to-pool page copy (see pool_copy.h for the function and its preconditions).
#ifndef PAGODA_KERNELS_POOL_COPY_CUDA_H_
#define PAGODA_KERNELS_POOL_COPY_CUDA_H_

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "pagoda/kernels/pool_copy.h"

namespace pagoda::kernels::gpu {

// Enqueues the copy on `stream`: one kernel, each page read once from `src` and written once to
// `dst`. Pools and slot arrays must be reachable from the current device (its memory, a peer's
// with peer access enabled, or pinned / registered host memory); the slot arrays are int32 device
// (or pinned host) memory and are trusted. 16-byte words when every base, stride and page_bytes is
// a multiple of 16, bytes otherwise. InvalidArgument for bad shapes (nothing enqueued).
absl::Status CopyPoolToPool(const PoolToPoolParams& p, cudaStream_t stream);

}  // namespace pagoda::kernels::gpu

#endif  // PAGODA_KERNELS_POOL_COPY_CUDA_H_
