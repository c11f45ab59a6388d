// CPU reference of sparse paged decode attention and streaming-head attention.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "convert.h"
#include "pagoda/kernels/reference.h"
#include "validate.h"

namespace pagoda::kernels {
namespace {

int64_t RowTokens(const PageTable& t, int32_t row, int32_t page_size) {
  const int32_t n = t.indptr[row + 1] - t.indptr[row];
  return n == 0 ? 0 : int64_t{n - 1} * page_size + t.last_page_len[row];
}

// Attention of the query heads of KV head h of sequence b over `n` logical tokens of table row
// `row`; logical token j is physical row token j for j < s0 and j + gap after.
class RowAttention {
 public:
  explicit RowAttention(const DecodeParams& p)
      : p_(p),
        dim_(p.kv.head_dim),
        group_(p.num_qo_heads / p.kv.num_kv_heads),
        scale_(p.sm_scale > 0.f ? p.sm_scale : 1.f / std::sqrt(static_cast<float>(dim_))),
        q_(static_cast<size_t>(group_) * dim_),
        kv_(dim_),
        acc_(static_cast<size_t>(group_) * dim_) {}

  void Run(int32_t b, int32_t h, int32_t row, int64_t n, int64_t s0, int64_t gap) {
    const PagedKV& kv = p_.kv;
    const int32_t hq0 = h * group_;
    for (int32_t g = 0; g < group_; ++g) {
      const uint16_t* q = p_.q + (int64_t{b} * p_.num_qo_heads + hq0 + g) * dim_;
      internal::RowToFloat(q, dim_, kv.dtype, &q_[g * dim_], scale_);
    }
    logits_.assign(static_cast<size_t>(group_) * n, 0.f);
    std::fill(acc_.begin(), acc_.end(), 0.f);
    const int32_t* pages = p_.table.indices + p_.table.indptr[row];
    auto token_ptr = [&](const uint16_t* base, int64_t j) {
      const int64_t t = j < s0 ? j : j + gap;
      return base + pages[t / kv.page_size] * kv.stride_page + h * kv.stride_head +
             (t % kv.page_size) * kv.stride_token;
    };
    for (int64_t j = 0; j < n; ++j) {  // logits, K converted once for the whole group
      const uint16_t* k = token_ptr(kv.k, j);
      internal::RowToFloat(k, dim_, kv.dtype, kv_.data());
      for (int32_t g = 0; g < group_; ++g) {
        logits_[g * n + j] = internal::Dot(&q_[g * dim_], kv_.data(), dim_);
      }
    }
    std::vector<float> max(group_, -std::numeric_limits<float>::infinity());
    std::vector<float> sum(group_, 0.f);
    for (int32_t g = 0; g < group_; ++g) {
      for (int64_t j = 0; j < n; ++j) max[g] = std::max(max[g], logits_[g * n + j]);
      for (int64_t j = 0; j < n; ++j) {
        logits_[g * n + j] = std::exp(logits_[g * n + j] - max[g]);
        sum[g] += logits_[g * n + j];
      }
    }
    for (int64_t j = 0; j < n; ++j) {  // weighted V, converted once for the whole group
      const uint16_t* v = token_ptr(kv.v, j);
      internal::RowToFloat(v, dim_, kv.dtype, kv_.data());
      for (int32_t g = 0; g < group_; ++g) {
        const float w = logits_[g * n + j];
        float* acc = &acc_[g * dim_];
        for (int32_t d = 0; d < dim_; ++d) acc[d] += w * kv_[d];
      }
    }
    for (int32_t g = 0; g < group_; ++g) {
      const int64_t out = int64_t{b} * p_.num_qo_heads + hq0 + g;
      const float inv = n > 0 ? 1.f / sum[g] : 0.f;
      for (int32_t d = 0; d < dim_; ++d) {
        p_.o[out * dim_ + d] = FromFloat(acc_[g * dim_ + d] * inv, kv.dtype);
      }
      if (p_.lse != nullptr) {
        p_.lse[out] = n > 0 ? max[g] + std::log(sum[g]) : -std::numeric_limits<float>::infinity();
      }
    }
  }

 private:
  const DecodeParams& p_;
  const int32_t dim_;
  const int32_t group_;
  const float scale_;
  std::vector<float> q_, kv_, acc_, logits_;
};

}  // namespace

absl::Status SparseDecodeReference(const DecodeParams& p) {
  if (auto s = internal::ValidateDecodeShape(p, /*streaming=*/false); !s.ok()) return s;
  if (auto s =
          internal::ValidateCsrHost(p.table.indptr, p.table.indices, p.table.last_page_len,
                                    p.table.num_rows, p.kv.num_pages, p.kv.page_size, "page table");
      !s.ok()) {
    return s;
  }
  RowAttention attn(p);
  for (int32_t b = 0; b < p.batch; ++b) {
    for (int32_t h = 0; h < p.kv.num_kv_heads; ++h) {
      const int32_t row = p.per_kv_head ? b * p.kv.num_kv_heads + h : b;
      const int64_t n = RowTokens(p.table, row, p.kv.page_size);
      attn.Run(b, h, row, n, n, 0);
    }
  }
  return absl::OkStatus();
}

absl::Status StreamingDecodeReference(const DecodeParams& p) {
  if (auto s = internal::ValidateDecodeShape(p, /*streaming=*/true); !s.ok()) return s;
  if (auto s =
          internal::ValidateCsrHost(p.table.indptr, p.table.indices, p.table.last_page_len,
                                    p.table.num_rows, p.kv.num_pages, p.kv.page_size, "page table");
      !s.ok()) {
    return s;
  }
  RowAttention attn(p);
  for (int32_t b = 0; b < p.batch; ++b) {
    const int64_t len = RowTokens(p.table, b, p.kv.page_size);
    const int64_t s0 = std::min<int64_t>(p.sink_tokens, len);
    const int64_t w0 = std::max<int64_t>(s0, len - p.window_tokens);
    for (int32_t h = 0; h < p.kv.num_kv_heads; ++h) {
      if (p.is_streaming[h] == 0) continue;
      attn.Run(b, h, b, s0 + (len - w0), s0, w0 - s0);
    }
  }
  return absl::OkStatus();
}

}  // namespace pagoda::kernels
