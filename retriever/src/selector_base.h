// Internal: what every policy shares — input checks, the key pool and summaries, the budget plan
// (always-kept sinks and window, candidates), and turning per-row page lists into a Selection.
#ifndef PAGODA_RETRIEVER_SRC_SELECTOR_BASE_H_
#define PAGODA_RETRIEVER_SRC_SELECTOR_BASE_H_

#include <cstdint>
#include <vector>

#include "key_pool.h"
#include "pagoda/retriever/selector.h"

namespace pagoda::retriever::internal {

// The budget of one step in pages of the natural layout.
struct Plan {
  int64_t tokens = 0;         // visible tokens T
  int32_t pages = 0;          // ceil(T / page_tokens)
  int32_t budget_pages = 0;   // budget_tokens / page_tokens
  int32_t sink_end = 0;       // sinks are pages [0, sink_end)
  int32_t window_begin = 0;   // window is pages [window_begin, pages)
  int32_t last_page_len = 0;  // tokens in page pages - 1
  int32_t kept() const { return sink_end + (pages - window_begin); }
  int32_t free_pages() const { return budget_pages - kept(); }
  // Always-kept pages ascending (the partial last page last).
  std::vector<int32_t> KeptPages() const;
};

class SelectorBase : public Selector {
 public:
  // `sub_pages` is the number of summary sub-pages per page kept by the pool.
  SelectorBase(const SelectorOptions& options, int sub_pages);

  absl::Status Prefill(absl::Span<const uint16_t> keys, int64_t num_tokens) final;
  absl::Status Append(absl::Span<const uint16_t> keys, int64_t num_tokens) final;
  absl::StatusOr<Selection> Select(absl::Span<const uint16_t> q) final;
  using Selector::BeginSelect;
  absl::StatusOr<ScoreRequest> BeginSelect(absl::Span<const uint16_t> q, bool closed_form) final;
  absl::StatusOr<Selection> FinishSelect(absl::Span<const std::vector<float>> mass) final;
  bool TakesLateReads() const final { return prefilled_ && LateCapable(); }
  bool CanStepLate() const final { return prefilled_ && !query_owed_ && StepsLate(); }
  absl::Status AppendDeferred(int64_t num_tokens) final;
  absl::Status SupplyKeys(absl::Span<const uint16_t> keys, int64_t num_tokens) final;
  absl::Status LateQuery(absl::Span<const uint16_t> q) final;
  int64_t num_tokens() const final { return pool_.tokens() + deferred_; }
  int64_t HostBytes() const final { return pool_.bytes() + ExtraBytes(); }
  absl::StatusOr<kernels::PageSummaries> Summaries() const final {
    if (!prefilled_) return absl::FailedPreconditionError("selector: Summaries before Prefill");
    if (pool_.sub_pages() == 0) return absl::UnimplementedError("this selector keeps no summaries");
    return pool_.summaries();
  }
  const SelectorOptions& options() const final { return options_; }

 protected:
  // Hooks, called after validation. OnPrefill / OnAppend run after the pool holds the new keys.
  virtual absl::Status OnPrefill(absl::Span<const uint16_t> keys, int64_t num_tokens) {
    return absl::OkStatus();
  }
  virtual absl::Status OnAppend(int64_t first, int64_t num_tokens) { return absl::OkStatus(); }
  // Late reads (Selector::TakesLateReads): whether the policy's options allow them, whether its
  // next step will be in closed form needing neither its query nor the deferred keys (a query is
  // not owed when this is asked), and the query of a step begun without one, handed over.
  virtual bool LateCapable() const { return false; }
  virtual bool StepsLate() const { return false; }
  virtual void OnLateQuery(absl::Span<const float> q_float) {}
  // Host bytes a policy holds besides the pool.
  virtual int64_t ExtraBytes() const { return 0; }
  // Chooses this step's KV; q_float is q converted to float. Must not change state on error.
  // A policy that rescores overrides BeginChoose / FinishChoose instead.
  virtual absl::StatusOr<Selection> Choose(absl::Span<const uint16_t> q,
                                           absl::Span<const float> q_float, const Plan& plan) {
    return absl::UnimplementedError("selector: no Choose");
  }
  // The halves of BeginSelect / FinishSelect after their checks (the masses match the request).
  // By default BeginChoose runs Choose and asks for nothing; FinishChoose returns its Selection.
  virtual absl::StatusOr<ScoreRequest> BeginChoose(absl::Span<const uint16_t> q,
                                                   absl::Span<const float> q_float,
                                                   const Plan& plan);
  virtual absl::StatusOr<Selection> FinishChoose(absl::Span<const std::vector<float>> mass);
  // BeginChoose may answer with a closed-form steady step (ScoreRequest::steady): set for the
  // duration of a BeginSelect whose caller accepts one.
  bool closed_form_ = false;
  // The key of token t of page `page` of KV head h in the selector's page space (natural pages
  // by default: position page * page_tokens + t).
  virtual const uint16_t* PageToken(int h, int32_t page, int32_t t) const {
    return pool_.key(h, int64_t{page} * options_.page_tokens + t);
  }
  // The masses of a request over the selector's own keys (PageMassReference, one row per head).
  absl::StatusOr<std::vector<std::vector<float>>> ScoreOnHost(const ScoreRequest& request,
                                                              absl::Span<const uint16_t> q) const;

  // A Selection of natural pages: rows[h] lists pages of KV head h (any order, no repeats).
  Selection FromNaturalPages(std::vector<std::vector<int32_t>> rows, const Plan& plan) const;
  // Fills out->prefetch[row] with the best `scores` candidates (parallel to cand) not in `chosen`.
  void AddPrefetch(const std::vector<int32_t>& cand, const float* scores,
                   const std::vector<int32_t>& chosen, std::vector<int32_t>* out) const;
  bool IsStreaming(int kv_head) const { return streaming_[kv_head] != 0; }
  int group_size() const { return options_.q_heads / options_.kv_heads; }

  const SelectorOptions options_;
  KeyPool pool_;
  bool prefilled_ = false;
  std::vector<uint8_t> streaming_;  // [kv_heads]

 private:
  bool begun_ = false;             // BeginSelect succeeded and FinishSelect has not
  int64_t deferred_ = 0;           // tokens appended whose keys are not supplied yet
  bool query_owed_ = false;        // the last step ran without its query (LateQuery next)
  std::vector<size_t> requested_;  // per KV head, the masses the begun selection asked for
  Selection chosen_;               // the default BeginChoose's Selection
  absl::Status CheckKeys(absl::Span<const uint16_t> keys, int64_t num_tokens) const;
  // q in float; InvalidArgument for a wrong size or a non-finite value.
  absl::StatusOr<std::vector<float>> QueryToFloat(absl::Span<const uint16_t> q) const;
};

}  // namespace pagoda::retriever::internal

#endif  // PAGODA_RETRIEVER_SRC_SELECTOR_BASE_H_
