// CPU reference of block-sparse causal prefill attention (PrefillParams).
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

struct Span {
  int64_t begin, end;  // key positions [begin, end)
};

// The kept keys of query position t under KV head h's mask (params.h), as ascending disjoint
// spans.
void KeptSpans(const PrefillParams& p, int32_t b, int32_t h, int64_t context, int64_t t,
               std::vector<Span>* spans) {
  spans->clear();
  const bool streaming = p.is_streaming != nullptr && p.is_streaming[h] != 0;
  if (streaming) {
    const int64_t sink_end = std::min<int64_t>(p.sink_tokens, t + 1);
    const int64_t window_begin = std::max<int64_t>(sink_end, t + 1 - p.window_tokens);
    if (sink_end > 0) spans->push_back({0, sink_end});
    if (window_begin <= t) spans->push_back({window_begin, t + 1});
    return;
  }
  if (p.select_indptr == nullptr) {
    spans->push_back({0, t + 1});
    return;
  }
  const int64_t r = int64_t{b} * p.kv.num_kv_heads + h;
  const int64_t ps = p.kv.page_size;
  for (int32_t i = p.select_indptr[r]; i < p.select_indptr[r + 1]; ++i) {
    const int64_t begin = p.select_pages[i] * ps;
    spans->push_back({begin, std::min(begin + ps, context)});
  }
  spans->push_back({context, t + 1});
}

}  // namespace

absl::Status BlockSparsePrefillReference(const PrefillParams& p) {
  if (auto s = internal::ValidatePrefillShape(p); !s.ok()) return s;
  if (auto s = internal::ValidatePrefillHost(p); !s.ok()) return s;
  const PagedKV& kv = p.kv;
  const int32_t dim = kv.head_dim;
  const int32_t group = p.num_qo_heads / kv.num_kv_heads;
  const float scale = p.sm_scale > 0.f ? p.sm_scale : 1.f / std::sqrt(static_cast<float>(dim));
  std::vector<float> k, v, q(dim), acc(dim), logits;
  std::vector<Span> spans;
  for (int32_t b = 0; b < p.batch; ++b) {
    const int32_t heads = p.per_kv_head ? kv.num_kv_heads : 1;
    const int64_t len = RowTokens(p.table, b * heads, kv.page_size);
    const int64_t n = p.q_indptr[b + 1] - p.q_indptr[b];
    if (n == 0) continue;
    const int64_t context = len - n;
    logits.resize(len);
    for (int32_t h = 0; h < kv.num_kv_heads; ++h) {
      // The row's K and V in float, once per (sequence, KV head).
      const int32_t* pages = p.table.indices + p.table.indptr[p.per_kv_head ? b * heads + h : b];
      k.resize(len * dim);
      v.resize(len * dim);
      for (int64_t j = 0; j < len; ++j) {
        const int64_t off = pages[j / kv.page_size] * kv.stride_page + h * kv.stride_head +
                            (j % kv.page_size) * kv.stride_token;
        internal::RowToFloat(kv.k + off, dim, kv.dtype, &k[j * dim]);
        internal::RowToFloat(kv.v + off, dim, kv.dtype, &v[j * dim]);
      }
      for (int64_t i = 0; i < n; ++i) {
        const int64_t t = context + i;
        KeptSpans(p, b, h, context, t, &spans);
        for (int32_t g = 0; g < group; ++g) {
          const int64_t out = (p.q_indptr[b] + i) * p.num_qo_heads + h * group + g;
          internal::RowToFloat(p.q + out * dim, dim, kv.dtype, q.data(), scale);
          float max = -std::numeric_limits<float>::infinity();
          for (const Span& s : spans) {
            for (int64_t j = s.begin; j < s.end; ++j) {
              logits[j] = internal::Dot(q.data(), &k[j * dim], dim);
              max = std::max(max, logits[j]);
            }
          }
          std::fill(acc.begin(), acc.end(), 0.f);
          float sum = 0.f;
          for (const Span& s : spans) {
            for (int64_t j = s.begin; j < s.end; ++j) {
              const float w = std::exp(logits[j] - max);
              sum += w;
              const float* vj = &v[j * dim];
              for (int32_t d = 0; d < dim; ++d) acc[d] += w * vj[d];
            }
          }
          const float inv = sum > 0.f ? 1.f / sum : 0.f;
          for (int32_t d = 0; d < dim; ++d) p.o[out * dim + d] = FromFloat(acc[d] * inv, kv.dtype);
          if (p.lse != nullptr) {
            p.lse[out] = sum > 0.f ? max + std::log(sum) : -std::numeric_limits<float>::infinity();
          }
        }
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace pagoda::kernels
