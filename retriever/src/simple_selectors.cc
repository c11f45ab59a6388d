#include "simple_selectors.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace pagoda::retriever::internal {

std::vector<int32_t> TopPages(const std::vector<int32_t>& cand, const std::vector<float>& scores,
                              int32_t k) {
  std::vector<int32_t> order(cand.size());
  std::iota(order.begin(), order.end(), 0);
  const size_t n = std::min<size_t>(std::max(k, 0), order.size());
  std::partial_sort(order.begin(), order.begin() + n, order.end(), [&](int32_t a, int32_t b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
  });
  std::vector<int32_t> pages(n);
  for (size_t i = 0; i < n; ++i) pages[i] = cand[order[i]];
  return pages;
}

absl::StatusOr<Selection> OracleSelector::Choose(absl::Span<const uint16_t> q,
                                                 absl::Span<const float> q_float,
                                                 const Plan& plan) {
  const int d = options_.head_dim;
  const int group = group_size();
  const int P = options_.page_tokens;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const std::vector<int32_t> keep = plan.KeptPages();
  std::vector<int32_t> cand(plan.window_begin - plan.sink_end);
  std::iota(cand.begin(), cand.end(), plan.sink_end);
  std::vector<std::vector<int32_t>> rows(options_.kv_heads), hints(options_.kv_heads);
  std::vector<float> logits(static_cast<size_t>(group) * plan.tokens), k(d);
  int64_t scanned_rows = 0;
  for (int h = 0; h < options_.kv_heads; ++h) {
    rows[h] = keep;
    if (IsStreaming(h)) continue;
    ++scanned_rows;
    for (int64_t t = 0; t < plan.tokens; ++t) {
      const uint16_t* kt = pool_.key(h, t);
      for (int i = 0; i < d; ++i) k[i] = kernels::ToFloat(kt[i], options_.dtype);
      for (int g = 0; g < group; ++g) {
        const float* qg = q_float.data() + static_cast<size_t>(h * group + g) * d;
        float dot = 0;
        for (int i = 0; i < d; ++i) dot += qg[i] * k[i];
        logits[g * plan.tokens + t] = dot * scale;
      }
    }
    std::vector<float> mass(plan.pages, 0.f);
    for (int g = 0; g < group; ++g) {
      float* l = logits.data() + g * plan.tokens;
      const float m = *std::max_element(l, l + plan.tokens);
      double z = 0;
      for (int64_t t = 0; t < plan.tokens; ++t) {
        l[t] = std::exp(l[t] - m);
        z += l[t];
      }
      for (int64_t t = 0; t < plan.tokens; ++t) mass[t / P] += static_cast<float>(l[t] / z);
    }
    std::vector<float> cand_mass(cand.size());
    for (size_t j = 0; j < cand.size(); ++j) cand_mass[j] = mass[cand[j]];
    std::vector<int32_t> chosen = TopPages(cand, cand_mass, plan.free_pages());
    rows[h].insert(rows[h].end(), chosen.begin(), chosen.end());
    std::sort(chosen.begin(), chosen.end());
    AddPrefetch(cand, cand_mass.data(), chosen, &hints[h]);
  }
  Selection out = FromNaturalPages(std::move(rows), plan);
  out.prefetch = std::move(hints);
  out.retrieved = true;
  out.summary_bytes = scanned_rows * plan.tokens * d * 2;  // every key, fp16
  return out;
}

absl::StatusOr<Selection> StreamingSelector::Choose(absl::Span<const uint16_t> q,
                                                    absl::Span<const float> q_float,
                                                    const Plan& plan) {
  std::vector<int32_t> pages;
  for (int32_t p = 0; p < plan.sink_end; ++p) pages.push_back(p);
  const int32_t recent_begin =
      std::max(plan.sink_end, plan.pages - (plan.budget_pages - plan.sink_end));
  for (int32_t p = recent_begin; p < plan.pages; ++p) pages.push_back(p);
  Selection out =
      FromNaturalPages(std::vector<std::vector<int32_t>>(options_.kv_heads, pages), plan);
  out.retrieved = false;  // nothing is looked up: the page set follows the position alone
  return out;
}

absl::Status AnnSelector::Init() {
  PageIndexOptions io;
  io.kind = options_.ann_kind;
  io.dim = options_.head_dim;
  io.ivf_nprobe = options_.ivf_nprobe;
  io.hnsw_m = options_.hnsw_m;
  io.hnsw_ef_search = options_.hnsw_ef_search;
  for (int h = 0; h < options_.kv_heads; ++h) {
    auto index = PageIndex::Create(io);
    if (!index.ok()) return index.status();
    indexes_.push_back(*std::move(index));
  }
  return absl::OkStatus();
}

absl::Status AnnSelector::IndexFullPages() {
  const int32_t full = static_cast<int32_t>(pool_.tokens() / options_.page_tokens);
  if (full <= indexed_pages_) return absl::OkStatus();
  const int d = options_.head_dim;
  std::vector<int64_t> ids(full - indexed_pages_);
  std::iota(ids.begin(), ids.end(), indexed_pages_);
  std::vector<float> vecs(ids.size() * d);
  for (int h = 0; h < options_.kv_heads; ++h) {
    for (size_t i = 0; i < ids.size(); ++i) {
      pool_.PageMean(static_cast<int32_t>(ids[i]), h, vecs.data() + i * d);
    }
    if (absl::Status s = indexes_[h]->Add(ids, vecs); !s.ok()) return s;
  }
  indexed_pages_ = full;
  return absl::OkStatus();
}

absl::StatusOr<Selection> AnnSelector::Choose(absl::Span<const uint16_t> q,
                                              absl::Span<const float> q_float, const Plan& plan) {
  const int d = options_.head_dim;
  const int group = group_size();
  const std::vector<int32_t> keep = plan.KeptPages();
  // Kept pages that sit in the index come back from the search too: fetch past them.
  int32_t kept_indexed = 0;
  for (int32_t p : keep) kept_indexed += p < indexed_pages_ ? 1 : 0;
  std::vector<std::vector<int32_t>> rows(options_.kv_heads), hints(options_.kv_heads);
  int64_t scanned = 0;
  std::vector<float> query(d);
  for (int h = 0; h < options_.kv_heads; ++h) {
    rows[h] = keep;
    const int32_t want = plan.free_pages();
    if (IsStreaming(h) || want == 0 || indexes_[h]->size() == 0) continue;
    std::fill(query.begin(), query.end(), 0.f);
    for (int g = 0; g < group; ++g) {
      const float* qg = q_float.data() + static_cast<size_t>(h * group + g) * d;
      for (int i = 0; i < d; ++i) query[i] += qg[i];
    }
    auto found = indexes_[h]->Search(query, want + kept_indexed + options_.prefetch_pages);
    if (!found.ok()) return found.status();
    scanned += found->vectors_scanned;
    int32_t taken = 0;
    for (const IndexHit& hit : found->hits) {
      const auto page = static_cast<int32_t>(hit.id);
      if (page < plan.sink_end || page >= plan.window_begin) continue;
      if (taken < want) {
        rows[h].push_back(page);
        ++taken;
      } else if (static_cast<int>(hints[h].size()) < options_.prefetch_pages) {
        hints[h].push_back(page);
      }
    }
  }
  Selection out = FromNaturalPages(std::move(rows), plan);
  out.prefetch = std::move(hints);
  out.retrieved = true;
  out.summary_bytes = scanned * d * 4;  // FAISS holds fp32 vectors
  return out;
}

}  // namespace pagoda::retriever::internal
