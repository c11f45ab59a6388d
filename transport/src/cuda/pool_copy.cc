#include "pagoda/transport/pool_copy.h"

#include "pagoda/kernels/cuda.h"

namespace pagoda {

absl::Status CopyPoolPagesAsync(const PagePool& src, const int32_t* src_slots, const PagePool& dst,
                                const int32_t* dst_slots, int32_t n, size_t page_bytes,
                                void* staging, cudaStream_t stream) {
  if (n <= 0 || page_bytes == 0 || staging == nullptr) {
    return absl::InvalidArgumentError("CopyPoolPages: need n > 0, page_bytes > 0 and staging");
  }
  if (src_slots == nullptr && dst_slots == nullptr) {
    return absl::InvalidArgumentError("CopyPoolPages: neither a source nor a destination pool");
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
