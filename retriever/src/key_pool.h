// Internal: the keys of one (sequence, layer) in the kernels' paged layout, with their page
// summaries kept current through the kernels' reference summary update.
//
// Pages are the sequence's natural pages (page p holds positions [p * page_tokens, ...)); the pool
// stores keys only: [pages, kv_heads, page_tokens, head_dim]. Not synchronized.
#ifndef PAGODA_RETRIEVER_SRC_KEY_POOL_H_
#define PAGODA_RETRIEVER_SRC_KEY_POOL_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "pagoda/kernels/params.h"

namespace pagoda::retriever::internal {

class KeyPool {
 public:
  // sub_pages divides page_tokens (summaries per logical sub-page; 1 = one per page; 0 = keys
  // only, no summaries: summaries() is then empty and must not be read).
  KeyPool(kernels::DType dtype, int kv_heads, int head_dim, int page_tokens, int sub_pages);

  // Appends keys [kv_heads, n, head_dim] (already validated) and updates the summaries of the
  // touched pages.
  absl::Status Append(absl::Span<const uint16_t> keys, int64_t n);

  int64_t tokens() const { return tokens_; }
  int32_t pages() const { return static_cast<int32_t>(count_.size()); }
  int page_tokens() const { return page_tokens_; }
  int sub_pages() const { return sub_pages_; }
  int kv_heads() const { return kv_heads_; }
  int head_dim() const { return head_dim_; }
  kernels::DType dtype() const { return dtype_; }

  // Views for the kernels' references (valid until the next Append).
  kernels::PagedKV kv() const;
  kernels::PageSummaries summaries() const;

  // Key of (head, position) as stored.
  const uint16_t* key(int head, int64_t pos) const {
    return keys_.data() + (pos / page_tokens_) * page_stride() +
           static_cast<int64_t>(head) * page_tokens_ * head_dim_ + (pos % page_tokens_) * head_dim_;
  }
  uint16_t* mutable_key(int head, int64_t pos) {
    return keys_.data() + (key(head, pos) - keys_.data());
  }
  // Mean key of (page, head) as summarized (sub-page 0 .. sub_pages - 1 averaged by tokens).
  void PageMean(int32_t page, int head, float* out) const;
  int32_t page_count(int32_t page) const { return count_[page]; }
  // Bytes held (keys and summaries, allocated capacity).
  int64_t bytes() const {
    return static_cast<int64_t>(keys_.capacity() + min_.capacity() + max_.capacity() +
                                mean_.capacity()) *
               2 +
           static_cast<int64_t>(count_.capacity()) * 4;
  }

 private:
  int64_t page_stride() const { return static_cast<int64_t>(kv_heads_) * page_tokens_ * head_dim_; }
  int64_t summary_stride() const {
    return static_cast<int64_t>(sub_pages_) * kv_heads_ * head_dim_;
  }

  kernels::DType dtype_;
  int kv_heads_, head_dim_, page_tokens_, sub_pages_;
  int64_t tokens_ = 0;
  std::vector<uint16_t> keys_;
  mutable std::vector<uint16_t> min_, max_, mean_;  // mutable: the kernels' struct is non-const
  mutable std::vector<int32_t> count_;
};

}  // namespace pagoda::retriever::internal

#endif  // PAGODA_RETRIEVER_SRC_KEY_POOL_H_
