// CPU reference of the prefill page assembly (PageAssemblyParams).
#include <cstring>
#include <vector>

#include "pagoda/kernels/head_checksum.h"
#include "pagoda/kernels/reference.h"
#include "validate.h"

namespace pagoda::kernels {

absl::Status ValidatePageAssembly(const PageAssemblyParams& p) {
  if (auto s = internal::ValidatePageAssemblyShape(p); !s.ok()) return s;
  return internal::ValidatePageAssemblyHost(p);
}

absl::Status AssemblePagesReference(const PageAssemblyParams& p) {
  if (auto s = ValidatePageAssembly(p); !s.ok()) return s;
  const int64_t row = int64_t{p.head_dim} * 2;  // bytes of one token of one head
  const int64_t half = p.page_size * row;       // K (or V) of one head of one page
  std::vector<uint8_t> head(static_cast<size_t>(2 * half));
  for (int32_t i = 0; i < p.num_pages; ++i) {
    for (int32_t h = 0; h < p.num_kv_heads; ++h) {
      for (int32_t t = 0; t < p.page_size; ++t) {
        const int64_t token = int64_t{i} * p.page_size + t;
        std::memcpy(head.data() + t * row, p.k + token * p.k_stride_token + h * p.k_stride_head,
                    static_cast<size_t>(row));
        std::memcpy(head.data() + half + t * row,
                    p.v + token * p.v_stride_token + h * p.v_stride_head, static_cast<size_t>(row));
      }
      p.head_sums[int64_t{i} * p.num_kv_heads + h] =
          HeadPageChecksum(head.data(), head.data() + half, half);
      if (p.dst_offset[i] < 0) continue;
      uint8_t* page = p.dst + p.dst_offset[i];
      std::memcpy(page + h * half, head.data(), static_cast<size_t>(half));
      std::memcpy(page + (int64_t{p.num_kv_heads} + h) * half, head.data() + half,
                  static_cast<size_t>(half));
    }
  }
  return absl::OkStatus();
}

}  // namespace pagoda::kernels
