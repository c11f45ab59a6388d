// CPU reference of the pool-to-pool page copy.
#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "pagoda/kernels/pool_copy.h"
#include "validate.h"

namespace pagoda::kernels {
namespace internal {

absl::Status ValidatePoolToPoolShape(const PoolToPoolParams& p) {
  if (p.page_bytes <= 0 || p.src_slots <= 0 || p.dst_slots <= 0 ||
      p.src_stride_bytes < p.page_bytes || p.dst_stride_bytes < p.page_bytes) {
    return absl::InvalidArgumentError(
        "pool copy: need page_bytes > 0, slots > 0 and strides >= page_bytes in both pools");
  }
  if (p.num_pages < 0) return absl::InvalidArgumentError("pool copy: num_pages must be >= 0");
  if (p.num_pages > 0 &&
      (p.src == nullptr || p.dst == nullptr || p.src_pages == nullptr || p.dst_pages == nullptr)) {
    return absl::InvalidArgumentError("pool copy: null pool or slot list");
  }
  return absl::OkStatus();
}

}  // namespace internal

absl::Status CopyPoolToPoolReference(const PoolToPoolParams& p) {
  if (auto s = internal::ValidatePoolToPoolShape(p); !s.ok()) return s;
  if (p.num_pages == 0) return absl::OkStatus();
  if (auto s =
          internal::ValidatePageIdsHost(p.src_pages, p.num_pages, p.src_slots, "pool copy src");
      !s.ok()) {
    return s;
  }
  if (auto s =
          internal::ValidatePageIdsHost(p.dst_pages, p.num_pages, p.dst_slots, "pool copy dst");
      !s.ok()) {
    return s;
  }
  if (auto s = internal::ValidateDistinctIdsHost(p.dst_pages, p.num_pages, "pool copy dst");
      !s.ok()) {
    return s;
  }
  // No byte both read and written: compare every written range with every read range, both
  // sorted by address (O(n log n)).
  using Range = std::pair<const uint8_t*, const uint8_t*>;
  std::vector<Range> reads(p.num_pages), writes(p.num_pages);
  for (int32_t i = 0; i < p.num_pages; ++i) {
    const uint8_t* r = p.src + p.src_pages[i] * p.src_stride_bytes;
    const uint8_t* w = p.dst + p.dst_pages[i] * p.dst_stride_bytes;
    reads[i] = {r, r + p.page_bytes};
    writes[i] = {w, w + p.page_bytes};
  }
  std::sort(reads.begin(), reads.end());
  std::sort(writes.begin(), writes.end());
  for (size_t r = 0, w = 0; r < reads.size() && w < writes.size();) {
    if (reads[r].first < writes[w].second && writes[w].first < reads[r].second) {
      return absl::InvalidArgumentError(
          absl::StrCat("pool copy: source slot and destination slot overlap (destination ",
                       (writes[w].first - p.dst) / p.dst_stride_bytes, ")"));
    }
    if (reads[r].second <= writes[w].second) {
      ++r;
    } else {
      ++w;
    }
  }
  for (int32_t i = 0; i < p.num_pages; ++i) {
    std::memcpy(p.dst + p.dst_pages[i] * p.dst_stride_bytes,
                p.src + p.src_pages[i] * p.src_stride_bytes, static_cast<size_t>(p.page_bytes));
  }
  return absl::OkStatus();
}

}  // namespace pagoda::kernels
