#include "pagoda/transport/pool_copy.h"

#include "pagoda/kernels/cuda.h"
#include "pagoda/kernels/pool_copy_cuda.h"

namespace pagoda {

absl::Status CopyPoolPagesAsync(const PagePool& src, const int32_t* src_slots, const PagePool& dst,
                                const int32_t* dst_slots, int32_t n, size_t page_bytes,
                                void* staging, cudaStream_t stream) {
  if (n <= 0 || page_bytes == 0) {
    return absl::InvalidArgumentError("CopyPoolPages: need n > 0 and page_bytes > 0");
  }
  if (src_slots == nullptr && dst_slots == nullptr) {
    return absl::InvalidArgumentError("CopyPoolPages: neither a source nor a destination pool");
  }
  if ((src_slots == nullptr || dst_slots == nullptr) && staging == nullptr) {
    return absl::InvalidArgumentError("CopyPoolPages: a gather or a scatter needs staging");
  }
  auto params = [&](const PagePool& pool, const int32_t* slots) {
    kernels::PageCopyParams p;
    p.pool = static_cast<uint8_t*>(pool.base);
    p.pool_pages = pool.slots;
    p.pool_stride_bytes = pool.stride_bytes;
    p.page_bytes = static_cast<int64_t>(page_bytes);
    p.pages = slots;
    p.num_pages = n;
    p.staging = static_cast<uint8_t*>(staging);
    return p;
  };
  if (src_slots != nullptr) {
    if (src.base == nullptr || src.slots <= 0 || src.stride_bytes < int64_t(page_bytes)) {
      return absl::InvalidArgumentError("CopyPoolPages: bad source pool");
    }
  }
  if (dst_slots != nullptr) {
    if (dst.base == nullptr || dst.slots <= 0 || dst.stride_bytes < int64_t(page_bytes)) {
      return absl::InvalidArgumentError("CopyPoolPages: bad destination pool");
    }
  }
  if (src_slots != nullptr && dst_slots != nullptr) {
    // Pool to pool: one pass, each page read once and written once (no trip through staging).
    kernels::PoolToPoolParams p;
    p.src = static_cast<const uint8_t*>(src.base);
    p.src_slots = src.slots;
    p.src_stride_bytes = src.stride_bytes;
    p.dst = static_cast<uint8_t*>(dst.base);
    p.dst_slots = dst.slots;
    p.dst_stride_bytes = dst.stride_bytes;
    p.page_bytes = static_cast<int64_t>(page_bytes);
    p.src_pages = src_slots;
    p.dst_pages = dst_slots;
    p.num_pages = n;
    return kernels::gpu::CopyPoolToPool(p, stream);
  }
  if (src_slots != nullptr) {
    if (absl::Status s = kernels::gpu::GatherPages(params(src, src_slots), stream); !s.ok()) {
      return s;
    }
  }
  if (dst_slots != nullptr) {
    return kernels::gpu::ScatterPages(params(dst, dst_slots), stream);
  }
  return absl::OkStatus();
}

}  // namespace pagoda
