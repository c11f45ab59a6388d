#include "quest_selector.h"

#include <algorithm>
#include <numeric>

#include "pagoda/kernels/reference.h"

namespace pagoda::retriever::internal {

absl::StatusOr<Selection> QuestSelector::Choose(absl::Span<const uint16_t> q,
                                                absl::Span<const float> q_float, const Plan& plan) {
  if (have_selection_ && steps_since_retrieval_ < reuse_steps_) {
    Selection out = Reuse(plan);
    ++steps_since_retrieval_;
    return out;
  }
  const int heads = options_.kv_heads;
  std::vector<int32_t> cand(plan.window_begin - plan.sink_end);
  std::iota(cand.begin(), cand.end(), plan.sink_end);
  const std::vector<int32_t> keep = plan.KeptPages();
  const int32_t cand_indptr[2] = {0, static_cast<int32_t>(cand.size())};
  const int32_t keep_indptr[2] = {0, static_cast<int32_t>(keep.size())};
  const int32_t last_len[1] = {plan.last_page_len};
  std::vector<float> scores(static_cast<size_t>(heads) * cand.size());
  std::vector<int32_t> out_indptr(heads + 1);
  std::vector<int32_t> out_indices(
      kernels::QuestOutputSize(1, heads, plan.free_pages(), cand_indptr, keep_indptr));
  std::vector<int32_t> out_last(heads);
  kernels::QuestParams p;
  p.batch = 1;
  p.num_qo_heads = options_.q_heads;
  p.q = q.data();
  p.summaries = pool_.summaries();
  p.page_size = options_.page_tokens;
  p.cand_indptr = cand_indptr;
  p.cand_pages = cand.data();
  p.keep_indptr = keep_indptr;
  p.keep_pages = keep.data();
  p.seq_last_page_len = last_len;
  p.top_k = plan.free_pages();
  p.reduce = options_.group_reduce;
  p.scores = scores.data();
  p.out_indptr = out_indptr.data();
  p.out_indices = out_indices.data();
  p.out_last_page_len = out_last.data();
  if (absl::Status s = kernels::QuestSelectReference(p); !s.ok()) return s;

  std::vector<std::vector<int32_t>> rows(heads), ranked(heads);
  std::vector<std::vector<int32_t>> hints(heads);
  int64_t scanned_rows = 0;
  for (int h = 0; h < heads; ++h) {
    if (IsStreaming(h)) {
      rows[h] = keep;
      continue;
    }
    ++scanned_rows;
    rows[h].assign(out_indices.begin() + out_indptr[h], out_indices.begin() + out_indptr[h + 1]);
    // The reference lists chosen candidates in candidate order; rank them for reuse.
    const float* sc = scores.data() + h * cand.size();
    std::vector<int32_t> chosen;
    for (int32_t page : rows[h]) {
      if (page >= plan.sink_end && page < plan.window_begin) chosen.push_back(page);
    }
    ranked[h] = chosen;
    std::stable_sort(ranked[h].begin(), ranked[h].end(), [&](int32_t a, int32_t b) {
      return sc[a - plan.sink_end] > sc[b - plan.sink_end];
    });
    std::sort(chosen.begin(), chosen.end());
    AddPrefetch(cand, sc, chosen, &hints[h]);
  }
  Selection out = FromNaturalPages(std::move(rows), plan);
  out.prefetch = hints;
  out.retrieved = true;
  out.summary_bytes = scanned_rows * static_cast<int64_t>(cand.size()) * pool_.sub_pages() *
                      2 /*min and max*/ * options_.head_dim * 2 /*bytes*/;
  ranked_ = std::move(ranked);
  prefetch_ = std::move(hints);
  have_selection_ = true;
  steps_since_retrieval_ = 1;
  return out;
}

Selection QuestSelector::Reuse(const Plan& plan) const {
  const std::vector<int32_t> keep = plan.KeptPages();
  std::vector<std::vector<int32_t>> rows(options_.kv_heads);
  for (int h = 0; h < options_.kv_heads; ++h) {
    rows[h] = keep;
    if (IsStreaming(h)) continue;
    int32_t room = plan.free_pages();
    for (int32_t page : ranked_[h]) {  // best first: the window moving on drops the worst
      if (room == 0) break;
      if (page >= plan.sink_end && page < plan.window_begin) {
        rows[h].push_back(page);
        --room;
      }
    }
  }
  Selection out = FromNaturalPages(std::move(rows), plan);
  out.prefetch = prefetch_;
  return out;
}

}  // namespace pagoda::retriever::internal
