// The semantic-boundary retrieval trigger (LouisKV).
//
// Consecutive decode queries of one layer are very similar until the text changes topic; a fresh
// retrieval is needed only then. The trigger keeps the queries of the last retrieval and fires
// when the mean over query heads of cos(q_at_last_retrieval[h], q_t[h]) drops below a threshold.
//
// Thread safety: BoundaryTrigger is not synchronized (one per sequence and layer);
// CalibrateBoundaryThreshold is a pure function.
#ifndef PAGODA_RETRIEVER_BOUNDARY_TRIGGER_H_
#define PAGODA_RETRIEVER_BOUNDARY_TRIGGER_H_

#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace pagoda::retriever {

class BoundaryTrigger {
 public:
  // threshold in [-1, 1]; q_heads, head_dim >= 1 (checked by Create).
  static absl::StatusOr<BoundaryTrigger> Create(int q_heads, int head_dim, float threshold);

  // Feeds the query of the next step, q [q_heads, head_dim]. Returns true ("retrieve now") on the
  // first call and whenever the mean cosine to the anchor is below the threshold; a true result
  // makes q the new anchor. InvalidArgument for a wrong size or a non-finite value (state kept).
  // A zero query head counts as cosine 0.
  absl::StatusOr<bool> Observe(absl::Span<const float> q);

  // Whether Observe(q) would fire, changing nothing (q as Observe takes it, already checked).
  bool WouldFire(absl::Span<const float> q) const;

  // Mean cosine computed by the last Observe (1 after the first call).
  float last_similarity() const { return last_similarity_; }
  // Forgets the anchor: the next Observe fires.
  void Reset() { has_anchor_ = false; }
  float threshold() const { return threshold_; }

 private:
  BoundaryTrigger(int q_heads, int head_dim, float threshold)
      : q_heads_(q_heads), head_dim_(head_dim), threshold_(threshold) {}

  int q_heads_;
  int head_dim_;
  float threshold_;
  bool has_anchor_ = false;
  float last_similarity_ = 1.0f;
  std::vector<float> anchor_;  // [q_heads, head_dim], each head normalized
};

// Mean over heads of the cosine between two queries [q_heads, head_dim] (0 for a zero head).
float MeanHeadCosine(absl::Span<const float> a, absl::Span<const float> b, int q_heads,
                     int head_dim);

// Calibrates the threshold on a run of queries [steps, q_heads, head_dim]: the largest threshold
// whose trigger fires on at most target_rate of the steps (the first step always fires, so a rate
// below 1/steps is unreachable and gives the smallest threshold found). Larger thresholds retrieve
// more often and follow the query more closely, so this spends the retrieval budget fully.
// InvalidArgument for bad shapes, steps < 1, or target_rate outside (0, 1].
absl::StatusOr<float> CalibrateBoundaryThreshold(absl::Span<const float> queries, int64_t steps,
                                                 int q_heads, int head_dim, double target_rate);

}  // namespace pagoda::retriever

#endif  // PAGODA_RETRIEVER_BOUNDARY_TRIGGER_H_
