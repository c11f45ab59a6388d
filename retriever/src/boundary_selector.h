// Internal: semantic-boundary retrieval (LouisKV).
//
// Layout. Prompt KV is grouped per KV head into k-means clusters (the retrieval unit, scored by
// its centroid); for the kernels each head's KV is addressed in a cluster-ordered layout:
//   [sink tokens 0 .. S) [prompt tokens S .. N, ordered by cluster] [tokens N .. T, in order]
// where N (page-aligned, at most prompt_len - window tokens) starts the natural region: the
// prompt's tail and everything generated. The Selection's page ids are pages of that layout
// (all full except the last, so a cluster's pages may carry neighbouring clusters' tokens: they
// are attended, counted in the budget and in the bytes); its spans are the true positions.
// Generated KV (and the prompt tail) is cut into segments at retrieval boundaries, each scored by
// its mean key. The sinks and the window are always kept.
//
// Retrieval happens only when BoundaryTrigger fires (or, with coverage_threshold, when the
// summaries say the resident pages hold too little of the estimated mass); between retrievals the
// resident pages of the last retrieval are ranked again for each query around the moving window.
// With rescore_factor, the best resident candidates by that estimate are then ordered by their
// exact q.k before the budget is filled; a rescore_factor covering every resident page skips the
// estimate between retrievals.
#ifndef PAGODA_RETRIEVER_SRC_BOUNDARY_SELECTOR_H_
#define PAGODA_RETRIEVER_SRC_BOUNDARY_SELECTOR_H_

#include <algorithm>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "pagoda/retriever/boundary_trigger.h"
#include "pagoda/retriever/prompt_clusters.h"
#include "selector_base.h"

namespace pagoda::retriever::internal {

// Builds the clusters of the prompt held by `pool` (its first `prompt_tokens` tokens), running
// k-means through `run` (empty: the kernels' reference).
absl::StatusOr<std::shared_ptr<const PromptClusters>> BuildPromptClusters(
    const KeyPool& pool, const SelectorOptions& options, uint64_t fingerprint,
    const KMeansRunner& run = {});
uint64_t KeysFingerprint(absl::Span<const uint16_t> keys);

class BoundarySelector final : public SelectorBase {
 public:
  // With clusters == nullptr, Prefill clusters the prompt itself.
  BoundarySelector(const SelectorOptions& options, std::shared_ptr<const PromptClusters> clusters,
                   KMeansRunner run = {})
      : SelectorBase(options, /*sub_pages=*/0),  // ranks by centroids and segment means
        clusters_(std::move(clusters)),
        run_(std::move(run)) {}
  // The prompt's clusters (null before Prefill when none were supplied).
  std::shared_ptr<const PromptClusters> clusters() const { return clusters_; }
  absl::Span<const int32_t> ResidentPages(int h) const override {
    if (!RescoresAllResident() || h < 0 || h >= static_cast<int>(resident_.size())) return {};
    return resident_[h];
  }

 protected:
  absl::Status OnPrefill(absl::Span<const uint16_t> keys, int64_t num_tokens) override;
  absl::Status OnAppend(int64_t first, int64_t num_tokens) override;
  int64_t ExtraBytes() const override;
  bool LateCapable() const override {
    return options_.trigger_late && RescoresAllResident() && options_.coverage_threshold <= 0.f;
  }
  // The trigger will not fire on the last query (or its retrieval waits a step: retrieve_late)
  // and something is resident: a closed-form step over the resident set, which needs no query
  // and no new key on the host.
  bool StepsLate() const override {
    return LateCapable() && !last_q_.empty() && !resident_.empty() && trigger_.has_value() &&
           (options_.retrieve_late || !trigger_->WouldFire(last_q_));
  }
  void OnLateQuery(absl::Span<const float> q_float) override {
    last_q_.assign(q_float.begin(), q_float.end());
    if (owed_.has_value() && owed_->q.empty()) owed_->q = last_q_;
  }
  absl::StatusOr<ScoreRequest> BeginChoose(absl::Span<const uint16_t> q,
                                           absl::Span<const float> q_float,
                                           const Plan& plan) override;
  absl::StatusOr<Selection> FinishChoose(absl::Span<const std::vector<float>> mass) override;
  const uint16_t* PageToken(int h, int32_t page, int32_t t) const override {
    return pool_.key(h, LayoutToPosition(h, page * options_.page_tokens + t));
  }

 private:
  struct Unit {
    int32_t layout_begin = 0;  // layout positions [layout_begin, layout_end)
    int32_t layout_end = 0;
    int32_t cluster = -1;  // its cluster, or -1 for segment `segment`
    int32_t segment = -1;
  };
  // Rescoring covers every resident page (rescore_factor >= resident_factor > 1).
  bool RescoresAllResident() const {
    return options_.resident_factor > 1.0 && options_.rescore_factor >= options_.resident_factor;
  }
  // Layout index of natural-region position t.
  int32_t NaturalToLayout(int64_t t) const {
    return natural_layout_ + static_cast<int32_t>(t - natural_begin_);
  }
  int32_t LayoutToPosition(int h, int32_t l) const;
  void ExtendPrefix(int64_t first, int64_t num_tokens);
  // Mean key of natural positions [a, b) of head h.
  void SegmentMean(int h, int64_t a, int64_t b, float* out) const;
  // Pages [0, SinkPages()) hold the sink tokens (kept every step).
  int32_t SinkPages() const {
    return (sink_tokens_ + options_.page_tokens - 1) / options_.page_tokens;
  }
  // The first page of head h's kept window in a step over `pages` layout pages.
  int32_t WindowBegin(int h, int32_t pages, int32_t budget) const;
  // A retrieval ranked with q_float at step `at` (the one the trigger fired for), taking effect at
  // `plan`'s step (the same step, or the next one with retrieve_late): opens a segment at `at`'s
  // token, ranks, makes the new resident set and begins `plan`'s step over it.
  ScoreRequest Retrieve(absl::Span<const float> q_float, const Plan& at, const Plan& plan);
  // At a retrieval rescoring every resident page: the resident set of each head becomes its kept
  // pages and the best pages of ranked_ after them, resident_factor x budget pages in all.
  void SetResident(const Plan& plan);
  // A step that rescores every resident page, in closed form
  // (ScoreRequest::steady): Begin's kept pages and candidates without listing them.
  ScoreRequest Steady(const Plan& plan) const;
  // Ranks layout pages by estimated attention mass for the query (all pages, or only the
  // resident ones); returns the number of units scored. With `coverage` (a full ranking and a
  // resident set), sets it to the mean over KV heads of the estimated mass of the best free
  // pages among the resident ones over that of the best free pages overall.
  int64_t Rank(absl::Span<const float> q_float, const Plan& plan, bool resident_only,
               double* coverage = nullptr);
  // The step after the ranking: marks each head's sinks and window and picks its rescoring
  // candidates, the best rescore_factor x free unmarked pages of ranked_ (into pending_); returns
  // what to score.
  ScoreRequest Begin(const Plan& plan, bool retrieved, int64_t summary_bytes);
  // Moves head h's candidates to the front of ranked_[h], by exact mass (ties in candidate
  // order). With need < their count only the best `need` are told apart: they come first, then
  // the others, each in candidate order.
  void Reorder(int h, absl::Span<const float> cand_mass, size_t need);

  // The selection between BeginChoose and FinishChoose.
  struct Pending {
    Plan plan;
    bool retrieved = false;
    int64_t summary_bytes = 0;
    // Per head: kept pages as flags over the layout's pages (kept from step to step; only the
    // flags set are cleared, so a step costs what it keeps, not the context) and as a list.
    std::vector<std::vector<char>> mark;
    std::vector<std::vector<int32_t>> marked;
    std::vector<int32_t> used;               // per head: pages marked
    std::vector<std::vector<int32_t>> cand;  // per head: rescoring candidates
    // Head h keeps page p (counted in used[h] once).
    void Mark(int h, int32_t p) {
      if (!mark[h][p]) {
        mark[h][p] = 1;
        marked[h].push_back(p);
        ++used[h];
      }
    }
    // Clears head h's marks and sizes its flags for `pages` pages.
    void Reset(int h, int32_t pages) {
      for (int32_t p : marked[h]) mark[h][p] = 0;
      marked[h].clear();
      mark[h].resize(pages, 0);
      used[h] = 0;
    }
    // Head h's kept pages, ascending.
    std::vector<int32_t> Kept(int h) const {
      std::vector<int32_t> k = marked[h];
      std::sort(k.begin(), k.end());
      return k;
    }
  };
  Pending pending_;
  std::shared_ptr<const PromptClusters> clusters_;
  KMeansRunner run_;            // k-means for Prefill's clustering (empty: the reference)
  int32_t sink_tokens_ = 0;     // S
  int64_t natural_begin_ = 0;   // N
  int32_t natural_layout_ = 0;  // layout index of position N (S + clustered tokens)
  std::vector<std::vector<float>> prefix_;  // [h][(t - N) * d] prefix sums of keys
  std::vector<int64_t> boundaries_;         // segment starts in the natural region
  std::optional<BoundaryTrigger> trigger_;
  std::vector<float> last_q_;  // trigger_late: the previous step's query
  // retrieve_late: the retrieval the trigger fired for at an earlier step, applied at the next
  // one: that step's plan and query (the query comes with LateQuery when it stepped late).
  struct Owed {
    Plan plan;
    std::vector<float> q;
  };
  std::optional<Owed> owed_;
  std::vector<std::vector<int32_t>> resident_;  // per row: pages fetched by the last retrieval
  std::vector<std::vector<int32_t>> ranked_;    // per row: layout pages of the last retrieval,
                                                // best first by estimated attention mass
};

}  // namespace pagoda::retriever::internal

#endif  // PAGODA_RETRIEVER_SRC_BOUNDARY_SELECTOR_H_
