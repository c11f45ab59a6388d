#include "key_pool.h"

#include <algorithm>

#include "pagoda/kernels/reference.h"

namespace pagoda::retriever::internal {

KeyPool::KeyPool(kernels::DType dtype, int kv_heads, int head_dim, int page_tokens, int sub_pages)
    : dtype_(dtype),
      kv_heads_(kv_heads),
      head_dim_(head_dim),
      page_tokens_(page_tokens),
      sub_pages_(sub_pages) {}

kernels::PagedKV KeyPool::kv() const {
  kernels::PagedKV kv;
  kv.dtype = dtype_;
  kv.num_pages = pages();
  kv.page_size = page_tokens_;
  kv.num_kv_heads = kv_heads_;
  kv.head_dim = head_dim_;
  kv.k = keys_.data();
  kv.v = nullptr;
  kv.stride_page = page_stride();
  kv.stride_head = static_cast<int64_t>(page_tokens_) * head_dim_;
  kv.stride_token = head_dim_;
  return kv;
}

kernels::PageSummaries KeyPool::summaries() const {
  kernels::PageSummaries sm;
  sm.dtype = dtype_;
  sm.num_pages = pages();
  sm.sub_pages = sub_pages_;
  sm.num_kv_heads = kv_heads_;
  sm.head_dim = head_dim_;
  sm.min = min_.data();
  sm.max = max_.data();
  sm.mean = mean_.data();
  sm.count = count_.data();
  return sm;
}

absl::Status KeyPool::Append(absl::Span<const uint16_t> keys, int64_t n) {
  const int64_t first = tokens_;
  const int64_t last = tokens_ + n;  // exclusive
  const int32_t old_pages = pages();
  const int32_t new_pages = static_cast<int32_t>((last + page_tokens_ - 1) / page_tokens_);
  // Grow by an eighth (at least 16 pages) instead of the vectors' doubling: a decode step adds one
  // token to a pool sized for its prompt, and doubling would hold up to twice the context.
  if (static_cast<size_t>(new_pages) * page_stride() > keys_.capacity()) {
    const size_t room = static_cast<size_t>(new_pages) + std::max(new_pages / 8, 16);
    keys_.reserve(room * page_stride());
    for (auto* v : {&min_, &max_, &mean_}) v->reserve(room * summary_stride());
    count_.reserve(room);
  }
  keys_.resize(static_cast<size_t>(new_pages) * page_stride());
  min_.resize(static_cast<size_t>(new_pages) * summary_stride());
  max_.resize(min_.size());
  mean_.resize(min_.size());
  count_.resize(new_pages, 0);
  for (int h = 0; h < kv_heads_; ++h) {
    for (int64_t i = 0; i < n; ++i) {
      const uint16_t* src = keys.data() + (static_cast<int64_t>(h) * n + i) * head_dim_;
      std::copy(src, src + head_dim_, mutable_key(h, first + i));
    }
  }
  std::vector<int32_t> touched, new_count;
  for (int32_t p = static_cast<int32_t>(first / page_tokens_); p < new_pages; ++p) {
    touched.push_back(p);
    new_count.push_back(static_cast<int32_t>(
        std::min<int64_t>(page_tokens_, last - static_cast<int64_t>(p) * page_tokens_)));
  }
  tokens_ = last;
  if (sub_pages_ == 0) {  // keys only
    for (size_t i = 0; i < touched.size(); ++i) count_[touched[i]] = new_count[i];
    return absl::OkStatus();
  }
  kernels::SummaryUpdateParams params;
  params.kv = kv();
  params.summaries = summaries();
  params.num_updates = static_cast<int32_t>(touched.size());
  params.pages = touched.data();
  params.new_count = new_count.data();
  absl::Status s = kernels::UpdateSummariesReference(params);
  if (!s.ok()) {  // cannot happen for validated input; roll back so the pool stays consistent
    tokens_ = first;
    keys_.resize(static_cast<size_t>(old_pages) * page_stride());
    min_.resize(static_cast<size_t>(old_pages) * summary_stride());
    max_.resize(min_.size());
    mean_.resize(min_.size());
    count_.resize(old_pages);
  }
  return s;
}

void KeyPool::PageMean(int32_t page, int head, float* out) const {
  std::fill(out, out + head_dim_, 0.f);
  const int32_t c = count_[page];
  const int sub = page_tokens_ / sub_pages_;
  for (int s = 0; s < sub_pages_ && s * sub < c; ++s) {
    const int32_t n = std::min(sub, c - s * sub);
    const uint16_t* m = mean_.data() + page * summary_stride() +
                        (static_cast<int64_t>(s) * kv_heads_ + head) * head_dim_;
    for (int d = 0; d < head_dim_; ++d) out[d] += kernels::ToFloat(m[d], dtype_) * n;
  }
  if (c > 0) {
    for (int d = 0; d < head_dim_; ++d) out[d] /= static_cast<float>(c);
  }
}

}  // namespace pagoda::retriever::internal
