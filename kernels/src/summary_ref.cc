// CPU reference of the page summary update (min / max / mean of keys per sub-page and KV head).
#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "pagoda/kernels/reference.h"
#include "validate.h"

namespace pagoda::kernels {

absl::Status UpdateSummariesReference(const SummaryUpdateParams& p) {
  if (auto s = internal::ValidateSummaryUpdateShape(p); !s.ok()) return s;
  const PagedKV& kv = p.kv;
  const PageSummaries& sm = p.summaries;
  const int32_t* sum_pages = p.summary_pages != nullptr ? p.summary_pages : p.pages;
  if (p.head_pages != nullptr) {
    if (auto s = internal::ValidatePageIdsHost(
            p.head_pages, int64_t{p.num_updates} * kv.num_kv_heads, kv.num_pages, "summary");
        !s.ok()) {
      return s;
    }
  } else if (auto s =
                 internal::ValidatePageIdsHost(p.pages, p.num_updates, kv.num_pages, "summary");
             !s.ok()) {
    return s;
  }
  if (auto s = internal::ValidatePageIdsHost(sum_pages, p.num_updates, sm.num_pages, "summary");
      !s.ok()) {
    return s;
  }
  if (auto s = internal::ValidateDistinctIdsHost(sum_pages, p.num_updates, "summary update");
      !s.ok())
    return s;
  for (int32_t i = 0; i < p.num_updates; ++i) {
    const int32_t old = p.old_count != nullptr ? p.old_count[i] : sm.count[sum_pages[i]];
    if (old < 0 || old > kv.page_size || p.new_count[i] < old || p.new_count[i] > kv.page_size) {
      return absl::InvalidArgumentError(absl::StrCat("summary update: page ", sum_pages[i], " has ",
                                                     old, " tokens, asked for ", p.new_count[i],
                                                     " (page_size ", kv.page_size, ")"));
    }
  }
  const int32_t dim = kv.head_dim;
  const int32_t sub = kv.page_size / sm.sub_pages;
  std::vector<float> mn(dim), mx(dim), sum(dim);
  for (int32_t i = 0; i < p.num_updates; ++i) {
    const int32_t page = sum_pages[i];
    const int32_t c0 = p.old_count != nullptr ? p.old_count[i] : sm.count[page];
    const int32_t c1 = p.new_count[i];
    for (int32_t s = c0 / sub; s < sm.sub_pages && s * sub < c1; ++s) {
      const int32_t begin = s * sub;
      const int32_t end = std::min(c1, begin + sub);
      const int32_t fresh = std::max(c0, begin);  // first token not yet in min / max
      // Without means only the new tokens are read.
      const int32_t first = sm.mean != nullptr ? begin : fresh;
      for (int32_t h = 0; h < kv.num_kv_heads; ++h) {
        const int64_t at = ((int64_t{page} * sm.sub_pages + s) * kv.num_kv_heads + h) * dim;
        const int64_t kv_page =
            p.head_pages != nullptr ? p.head_pages[int64_t{i} * kv.num_kv_heads + h] : p.pages[i];
        const uint16_t* keys = kv.k + kv_page * kv.stride_page + h * kv.stride_head;
        const bool had = c0 > begin;
        for (int32_t d = 0; d < dim; ++d) {
          mn[d] = had ? ToFloat(sm.min[at + d], sm.dtype) : INFINITY;
          mx[d] = had ? ToFloat(sm.max[at + d], sm.dtype) : -INFINITY;
          sum[d] = 0.f;
        }
        for (int32_t t = first; t < end; ++t) {
          const uint16_t* k = keys + t * kv.stride_token;
          for (int32_t d = 0; d < dim; ++d) {
            const float x = ToFloat(k[d], kv.dtype);
            sum[d] += x;
            if (t >= fresh) {
              mn[d] = std::min(mn[d], x);
              mx[d] = std::max(mx[d], x);
            }
          }
        }
        const float inv = 1.f / static_cast<float>(end - begin);
        for (int32_t d = 0; d < dim; ++d) {
          sm.min[at + d] = FromFloat(mn[d], sm.dtype);
          sm.max[at + d] = FromFloat(mx[d], sm.dtype);
          if (sm.mean != nullptr) sm.mean[at + d] = FromFloat(sum[d] * inv, sm.dtype);
        }
      }
    }
    sm.count[page] = c1;
  }
  return absl::OkStatus();
}

}  // namespace pagoda::kernels
