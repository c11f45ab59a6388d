// Pool-to-pool page copy: slot src_pages[i] of one slot pool to slot dst_pages[i] of another, in
// one pass (no staging buffer). This is how pages move between two tiers or two workers' KV pools
// laid out as slots (a peer GPU's pool over NVLink, pinned host memory, this GPU's pool).
//
// CopyPoolToPoolReference is the plain C++ function; gpu::CopyPoolToPool (pool_copy_cuda.h)
// computes the same on the GPU.
#ifndef PAGODA_KERNELS_POOL_COPY_H_
#define PAGODA_KERNELS_POOL_COPY_H_

#include <cstdint>

#include "absl/status/status.h"

namespace pagoda::kernels {

// Slot s of a pool is at base + s * stride_bytes (stride_bytes >= page_bytes). Preconditions:
// every src_pages[i] in [0, src_slots), every dst_pages[i] in [0, dst_slots), no destination slot
// listed twice, and no byte both read and written by the copy (when the two pools overlap, the
// slots read and the slots written are disjoint). The reference checks them all and writes
// nothing when one fails; the GPU kernel checks shapes only (device data is trusted).
struct PoolToPoolParams {
  const uint8_t* src = nullptr;
  int64_t src_slots = 0;
  int64_t src_stride_bytes = 0;
  uint8_t* dst = nullptr;
  int64_t dst_slots = 0;
  int64_t dst_stride_bytes = 0;
  int64_t page_bytes = 0;
  const int32_t* src_pages = nullptr;  // [num_pages]
  const int32_t* dst_pages = nullptr;  // [num_pages]
  int32_t num_pages = 0;
};

// Copies the pages. InvalidArgument for bad shapes, a repeated destination slot or overlapping
// reads and writes; OutOfRange for a slot id outside its pool. Nothing is written on error.
absl::Status CopyPoolToPoolReference(const PoolToPoolParams& p);

namespace internal {
// Shape checks shared by the reference and the GPU entry point (no device data read).
absl::Status ValidatePoolToPoolShape(const PoolToPoolParams& p);
}  // namespace internal

}  // namespace pagoda::kernels

#endif  // PAGODA_KERNELS_POOL_COPY_H_
