// Internal: the oracle (evaluation only), the streaming baseline and FAISS ANN selectors.
#ifndef PAGODA_RETRIEVER_SRC_SIMPLE_SELECTORS_H_
#define PAGODA_RETRIEVER_SRC_SIMPLE_SELECTORS_H_

#include <memory>
#include <vector>

#include "pagoda/retriever/page_index.h"
#include "selector_base.h"

namespace pagoda::retriever::internal {

// Exact top pages by true attention mass, summed over the group's query heads (group-consistent
// and the best possible group-consistent choice for the group's total mass). Reads every key.
class OracleSelector final : public SelectorBase {
 public:
  explicit OracleSelector(const SelectorOptions& options) : SelectorBase(options, 1) {}

 protected:
  absl::StatusOr<Selection> Choose(absl::Span<const uint16_t> q, absl::Span<const float> q_float,
                                   const Plan& plan) override;
};

// StreamingLLM at the same budget: the sinks and the most recent pages that fit.
class StreamingSelector final : public SelectorBase {
 public:
  explicit StreamingSelector(const SelectorOptions& options) : SelectorBase(options, 1) {}

 protected:
  absl::StatusOr<Selection> Choose(absl::Span<const uint16_t> q, absl::Span<const float> q_float,
                                   const Plan& plan) override;
};

// Pages nearest to the group's query (sum of its query heads) by inner product with the page's
// mean key, from one FAISS index per KV head; full pages join the index as they complete.
class AnnSelector final : public SelectorBase {
 public:
  explicit AnnSelector(const SelectorOptions& options) : SelectorBase(options, 1) {}
  absl::Status Init();

 protected:
  absl::Status OnPrefill(absl::Span<const uint16_t> keys, int64_t num_tokens) override {
    return IndexFullPages();
  }
  absl::Status OnAppend(int64_t first, int64_t num_tokens) override { return IndexFullPages(); }
  absl::StatusOr<Selection> Choose(absl::Span<const uint16_t> q, absl::Span<const float> q_float,
                                   const Plan& plan) override;

 private:
  absl::Status IndexFullPages();

  std::vector<std::unique_ptr<PageIndex>> indexes_;  // [kv_heads]
  int32_t indexed_pages_ = 0;                        // pages [0, indexed_pages_) are indexed
};

// Pages of `cand` with the k largest scores (parallel arrays), best first; ties to the earlier.
std::vector<int32_t> TopPages(const std::vector<int32_t>& cand, const std::vector<float>& scores,
                              int32_t k);

}  // namespace pagoda::retriever::internal

#endif  // PAGODA_RETRIEVER_SRC_SIMPLE_SELECTORS_H_
