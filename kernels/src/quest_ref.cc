// CPU reference of Quest page scoring (plain and hierarchical) and top-k page selection.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "convert.h"
#include "pagoda/kernels/reference.h"
#include "validate.h"

namespace pagoda::kernels {
namespace {

absl::Status ValidateQuestHost(const QuestParams& p) {
  const PageSummaries& sm = p.summaries;
  if (auto s = internal::ValidateCsrHost(p.cand_indptr, p.cand_pages, nullptr, p.batch,
                                         sm.num_pages, p.page_size, "candidates");
      !s.ok()) {
    return s;
  }
  if (auto s = internal::ValidateCsrHost(p.keep_indptr, p.keep_pages, nullptr, p.batch,
                                         sm.num_pages, p.page_size, "kept pages");
      !s.ok()) {
    return s;
  }
  std::vector<int32_t> cand, keep;
  for (int32_t b = 0; b < p.batch; ++b) {
    cand.assign(p.cand_pages + p.cand_indptr[b], p.cand_pages + p.cand_indptr[b + 1]);
    keep.assign(p.keep_pages + p.keep_indptr[b], p.keep_pages + p.keep_indptr[b + 1]);
    for (int32_t page : cand) {
      if (sm.count[page] < 0 || sm.count[page] > p.page_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("quest: summary count of page ", page, " is ", sm.count[page]));
      }
    }
    std::sort(cand.begin(), cand.end());
    std::sort(keep.begin(), keep.end());
    std::vector<int32_t> both;
    std::set_intersection(cand.begin(), cand.end(), keep.begin(), keep.end(),
                          std::back_inserter(both));
    if (!both.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("quest: page ", both[0], " of sequence ", b,
                                                     " is both a candidate and always kept"));
    }
    if (!keep.empty() && (p.seq_last_page_len[b] < 1 || p.seq_last_page_len[b] > p.page_size)) {
      return absl::InvalidArgumentError(
          absl::StrCat("quest: seq_last_page_len[", b, "] = ", p.seq_last_page_len[b]));
    }
  }
  return absl::OkStatus();
}

}  // namespace

int64_t QuestOutputSize(int32_t batch, int32_t num_kv_heads, int32_t top_k,
                        const int32_t* cand_indptr, const int32_t* keep_indptr) {
  int64_t total = 0;
  for (int32_t b = 0; b < batch; ++b) {
    const int64_t n = cand_indptr[b + 1] - cand_indptr[b];
    total += (std::min<int64_t>(top_k, n) + keep_indptr[b + 1] - keep_indptr[b]) * num_kv_heads;
  }
  return total;
}

absl::Status QuestSelectReference(const QuestParams& p) {
  if (auto s = internal::ValidateQuestShape(p); !s.ok()) return s;
  if (auto s = ValidateQuestHost(p); !s.ok()) return s;
  const PageSummaries& sm = p.summaries;
  const int32_t heads = sm.num_kv_heads;
  const int32_t dim = sm.head_dim;
  const int32_t group = p.num_qo_heads / heads;
  const int32_t sub = p.page_size / sm.sub_pages;
  const int64_t num_cand = p.cand_indptr[p.batch];
  std::vector<float> q(static_cast<size_t>(group) * dim), mn(dim), mx(dim);
  std::vector<int32_t> order;
  std::vector<char> chosen;
  int32_t out = 0;
  for (int32_t b = 0; b < p.batch; ++b) {
    const int32_t c0 = p.cand_indptr[b];
    const int32_t n = p.cand_indptr[b + 1] - c0;
    const int32_t k = std::min(p.top_k, n);
    for (int32_t h = 0; h < heads; ++h) {
      for (int32_t g = 0; g < group; ++g) {
        const uint16_t* src = p.q + (int64_t{b} * p.num_qo_heads + h * group + g) * dim;
        internal::RowToFloat(src, dim, sm.dtype, &q[g * dim]);
      }
      float* scores = p.scores + h * num_cand + c0;
      for (int32_t j = 0; j < n; ++j) {
        const int32_t page = p.cand_pages[c0 + j];
        const int32_t valid_subs = std::min(sm.sub_pages, (sm.count[page] + sub - 1) / sub);
        float best = -std::numeric_limits<float>::infinity();
        for (int32_t s = 0; s < valid_subs; ++s) {
          const int64_t at = ((int64_t{page} * sm.sub_pages + s) * heads + h) * dim;
          internal::RowToFloat(sm.min + at, dim, sm.dtype, mn.data());
          internal::RowToFloat(sm.max + at, dim, sm.dtype, mx.data());
          float agg = p.reduce == GroupReduce::kMax ? -std::numeric_limits<float>::infinity() : 0.f;
          for (int32_t g = 0; g < group; ++g) {
            const float bound = internal::QuestBound(&q[g * dim], mx.data(), mn.data(), dim);
            agg = p.reduce == GroupReduce::kMax ? std::max(agg, bound) : agg + bound;
          }
          if (std::isnan(agg)) agg = -std::numeric_limits<float>::infinity();
          best = std::max(best, agg);
        }
        scores[j] = best;
      }
      // Top-k by (score descending, candidate position ascending), listed in candidate order.
      order.resize(n);
      for (int32_t j = 0; j < n; ++j) order[j] = j;
      auto better = [scores](int32_t a, int32_t c) {
        return scores[a] > scores[c] || (scores[a] == scores[c] && a < c);
      };
      if (k < n) std::nth_element(order.begin(), order.begin() + k, order.end(), better);
      chosen.assign(n, 0);
      for (int32_t j = 0; j < k; ++j) chosen[order[j]] = 1;
      const int32_t row = b * heads + h;
      p.out_indptr[row] = out;
      for (int32_t j = 0; j < n; ++j) {
        if (chosen[j]) p.out_indices[out++] = p.cand_pages[c0 + j];
      }
      for (int32_t j = p.keep_indptr[b]; j < p.keep_indptr[b + 1]; ++j) {
        p.out_indices[out++] = p.keep_pages[j];
      }
      p.out_last_page_len[row] =
          p.keep_indptr[b + 1] > p.keep_indptr[b] ? p.seq_last_page_len[b] : p.page_size;
    }
  }
  p.out_indptr[p.batch * heads] = out;
  return absl::OkStatus();
}

}  // namespace pagoda::kernels
