// Internal: Quest (every step) and hierarchical LServe (sub-page bounds, reused selections).
#ifndef PAGODA_RETRIEVER_SRC_QUEST_SELECTOR_H_
#define PAGODA_RETRIEVER_SRC_QUEST_SELECTOR_H_

#include <vector>

#include "selector_base.h"

namespace pagoda::retriever::internal {

// Scores pages with the kernels' Quest reference (a page = max over its sub_pages logical
// sub-pages of the group's bound) and keeps the top ones. With reuse_steps > 1 a selection is
// served again for the following steps, topped up with the moving window (LServe).
class QuestSelector final : public SelectorBase {
 public:
  QuestSelector(const SelectorOptions& options, int sub_pages, int reuse_steps)
      : SelectorBase(options, sub_pages), reuse_steps_(reuse_steps) {}

 protected:
  absl::StatusOr<Selection> Choose(absl::Span<const uint16_t> q, absl::Span<const float> q_float,
                                   const Plan& plan) override;

 private:
  Selection Reuse(const Plan& plan) const;

  const int reuse_steps_;
  int steps_since_retrieval_ = 0;
  bool have_selection_ = false;
  std::vector<std::vector<int32_t>> ranked_;    // per row: chosen candidates, best first
  std::vector<std::vector<int32_t>> prefetch_;  // per row: hints of the last retrieval
};

}  // namespace pagoda::retriever::internal

#endif  // PAGODA_RETRIEVER_SRC_QUEST_SELECTOR_H_
