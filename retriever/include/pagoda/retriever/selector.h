// Page selection policies behind one interface.
//
// One Selector serves one (sequence, layer): it sees the keys of every KV head as tokens arrive
// and, for each decode query, returns one page set per KV head (per GQA group: all query heads
// that read a KV head share it, so each page is read once). Budgets are in tokens and include the
// always-kept pages (attention sinks at the start, a local window at the end).
//
// Usage:
//   auto sel = MakeSelector(Policy::kQuest, options);          // validates options
//   (*sel)->Prefill(prompt_keys, prompt_len);                  // keys [kv_heads, n, head_dim]
//   for each decode step t:
//     (*sel)->Append(key_t, 1);                                // the query's own token first
//     auto s = (*sel)->Select(q_t);                            // q [q_heads, head_dim]
//
// Thread safety: a Selector is not synchronized; use one per (sequence, layer) per thread.
#ifndef PAGODA_RETRIEVER_SELECTOR_H_
#define PAGODA_RETRIEVER_SELECTOR_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "pagoda/kernels/dtype.h"
#include "pagoda/kernels/params.h"
#include "pagoda/retriever/selection.h"

namespace pagoda::retriever {

enum class Policy {
  kOracle,        // exact top-k pages by true attention mass (keeps all keys: evaluation only)
  kQuest,         // Quest min/max bounds, fresh selection every step
  kHierarchical,  // LServe: logical sub-pages scored, physical = max, reused for reuse_steps
  kBoundary,      // LouisKV: retrieve on query drift; prompt k-means clusters, generated segments
  kAnn,           // FAISS nearest pages by mean key (flat / IVF / HNSW)
  kStreaming,     // sinks + local window only (StreamingLLM / streaming heads)
};

enum class AnnKind { kFlat, kIvf, kHnsw };

// How query heads of one GQA group combine their per-page scores (the kernels' enum).
using GroupReduce = kernels::GroupReduce;

absl::string_view PolicyName(Policy policy);
absl::StatusOr<Policy> ParsePolicy(absl::string_view name);

struct SelectorOptions {
  // Model shape of the layer. q_heads must be a multiple of kv_heads (GQA: head h reads KV head
  // h / (q_heads / kv_heads)).
  int kv_heads = 4;
  int q_heads = 12;
  int head_dim = 64;
  // Storage type of keys and queries handed to the selector (raw 16-bit patterns).
  kernels::DType dtype = kernels::DType::kFloat16;

  // Tokens per page (16, 32 or 64 are the store's sizes; any power of two >= 4 is accepted).
  int page_tokens = 16;
  // Token budget per KV head, always-kept pages included. Rounded down to whole pages. Select
  // fails with InvalidArgument when it exceeds the visible context (read everything instead).
  int64_t budget_tokens = 512;
  // Always kept: the first sink_pages pages and the last window_pages pages (the current, partly
  // filled page counts as one). Large LLMs put much attention on the first token; keep 1 there.
  int sink_pages = 1;
  int window_pages = 1;
  // KV heads that are streaming heads (DuoAttention-style): they keep only sinks + window.
  std::vector<int> streaming_kv_heads;
  // How a group's query heads combine scores. Sum measured better than max on real attention
  // (bench/RESULTS.md, "Retriever"): it ranks by the group's total need.
  GroupReduce group_reduce = GroupReduce::kSum;
  // Prefetch hints per row: the next-best pages after the cut.
  int prefetch_pages = 4;

  // kHierarchical: tokens per logical sub-page (clamped to page_tokens), and how many decode steps
  // one selection serves (1 = every step). More reuse saves scans but follows the query less.
  int logical_page_tokens = 16;
  int reuse_steps = 4;

  // kBoundary: re-select when mean over query heads of cos(q at last retrieval, q_t) < threshold.
  // Higher = more retrievals and better recall; calibrate with CalibrateBoundaryThreshold().
  float boundary_threshold = 0.85f;
  // kBoundary: mean prompt tokens per k-means cluster (clusters = prompt_len / this), and Lloyd
  // iterations. Smaller clusters select more precisely but cost more centroid scans.
  int cluster_tokens = 16;
  int kmeans_iters = 8;
  // kBoundary: cluster the prompt in windows of this many tokens (a multiple of page_tokens), each
  // on its own (window_tokens / cluster_tokens clusters of its tokens), so clustering costs time
  // linear in the prompt (whole-prompt k-means is quadratic: at 128K tokens, 8K clusters, it is
  // hours per layer on a CPU core). 0 = one window (the whole prompt). 1024 lost no recall on the
  // traces (bench/RESULTS.md, "Retriever").
  int cluster_window_tokens = 1024;
  // kBoundary: a retrieval fetches the best resident_factor x budget pages; every step then
  // attends the best budget pages among them for its own query (by their exact masses, see
  // rescore_factor; no store traffic). 1 = plain LouisKV (the retrieved set is reused as is).
  // More residency follows the query better at the cost of GPU memory (4 x a 1/16 budget = 1/4 of
  // the context).
  double resident_factor = 4.0;
  // kBoundary: exact rescoring. Each step the best rescore_factor x (budget - always-kept) pages
  // by the centroid estimate (resident pages only, between retrievals) are rescored with their
  // exact q.k (softmax per query head over those pages and the always-kept ones, reduced over the
  // GQA group) and the budget is filled by the exact score. Their keys are on the device; the
  // keys of rescored pages that are not attended are counted in summary_bytes. <= 1 = off; needs
  // resident_factor > 1 (only resident pages are rescored). >= resident_factor (the default)
  // rescores every resident page: a retrieval makes the best resident_factor x budget pages by
  // the estimate resident, and that step, like every step until the next retrieval, attends the
  // kept pages and the resident ones of greatest exact mass (the estimate ranks nothing between
  // retrievals: no centroid scan on the host). On real attention at a 1/16 budget that gave group
  // recall 0.964 (1.5: 0.950; off: 0.932) for more key reads of resident pages (bench/RESULTS.md,
  // "Retriever").
  double rescore_factor = 4.0;
  // kBoundary: the trigger decides step t from the query of step t - 1 (the previous step's; the
  // first step after Prefill observes its own), as a caller that reads queries back from its
  // device a step late without waiting would: such a caller knows before a step whether it
  // retrieves, and needs the step's own query and keys on the host only then (the ranking uses
  // the step's own query: ranking with the previous one too lost 0.019 of group recall on the
  // traces, bench/RESULTS.md). Off: the trigger sees each step's own query.
  bool trigger_late = false;
  // kBoundary with trigger_late: a step the trigger fires at is taken like the steps between
  // retrievals (the best of the current resident set by exact mass) and its retrieval, ranked with
  // that step's own query, takes effect from the next step on (its ScoreRequest says retrieved).
  // A caller reading queries late then never needs a query on time after the first step: every
  // step but the first can step late (CanStepLate). Needs trigger_late and no coverage trigger.
  bool retrieve_late = false;
  // kBoundary: coverage trigger. Between retrievals every step also scans all units' summaries
  // (counted in summary_bytes) and retrieves when the estimated mass of the best free pages among
  // the resident ones, over that of the best free pages overall (mean over KV heads), falls below
  // this; the boundary trigger still fires too. 0 = off.
  float coverage_threshold = 0.f;

  // kBoundary: fill Selection::spans with the true positions of the attended tokens (what recall
  // is measured on). false leaves them empty and skips mapping every attended layout token back
  // to its position: for a caller that reads page ids only (the decode worker).
  bool token_spans = true;

  // kAnn: index kind and its knobs. HNSW efSearch below ~128 misses exact neighbours (DEPS.md).
  AnnKind ann_kind = AnnKind::kFlat;
  int ivf_nprobe = 8;
  int hnsw_m = 32;
  int hnsw_ef_search = 128;
};

// Checks shapes and knobs; InvalidArgument with the offending field otherwise.
absl::Status ValidateOptions(const SelectorOptions& options);

// The most pages one KV head's ScoreRequest names in a step (kept pages and candidates) for a
// budget of budget_pages (0 for a policy that rescores nothing): what a caller scoring where
// the keys are must hold at once.
int64_t MaxScoredPages(Policy policy, const SelectorOptions& options, int64_t budget_pages);

// One KV head of a step in closed form (louiskv rescoring every resident page: every step once
// something is resident, retrievals included). Its kept pages are [0, sink_end) and [window_begin,
// pages), the last of them holding tokens - (pages - 1) * page_tokens tokens; its candidates are
// the full pages Selector::ResidentPages(h)[cand_begin, cand_end) (ascending, inside [sink_end,
// window_begin)). The masses are a ScoreRequest's for the pages kept-then-candidates (one softmax
// over all their tokens, kept pages ascending first); the step attends the kept pages and the
// `need` candidates of greatest mass, ties to the earlier candidate (BestByMass). This is exactly
// what BeginSelect without closed_form followed by FinishSelect selects.
struct SteadyRow {
  int32_t sink_end = 0;
  int32_t window_begin = 0;
  int32_t pages = 0;
  int32_t cand_begin = 0;
  int32_t cand_end = 0;
  int32_t need = 0;
  int32_t kept() const { return sink_end + (pages - window_begin); }
};

// The pages a selector asks its caller to score exactly (Selector::BeginSelect).
struct ScoreRequest {
  // Page p of the selector's page space (a Selection's page ids) holds tokens [p * page_tokens,
  // min(tokens, (p + 1) * page_tokens)).
  int64_t tokens = 0;
  // Per KV head: the pages whose masses are wanted (one softmax over all their tokens): pages
  // [0, first_candidate[h]) share the softmax only, the rest are the candidates being ranked.
  // Empty for a head with nothing to rescore. The kept pages are ascending; so are the
  // candidates between retrievals when every resident page is rescored (a caller can resolve a
  // step's pages against the last step's by merging).
  std::vector<std::vector<int32_t>> pages;
  std::vector<int32_t> first_candidate;
  // Set instead of pages (BeginSelect with closed_form) for a step between retrievals of a
  // selector that rescores every resident page: per KV head, the step in closed form. No
  // FinishSelect follows; the caller computes the masses and the choice (SteadyRow).
  std::vector<SteadyRow> steady;
  // With steady: the step retrieved (ResidentPages changed; the trigger fired). A listed step's
  // Selection says so itself.
  bool retrieved = false;
  bool empty() const {
    for (const auto& p : pages) {
      if (!p.empty()) return false;
    }
    return steady.empty();
  }
};

// The indices (ascending) of the min(need, mass.size()) entries of greatest mass, ties to the
// lower index: the choice of a steady step (the decode worker's backends compute it the same
// way).
std::vector<int32_t> BestByMass(absl::Span<const float> mass, int32_t need);

class Selector {
 public:
  virtual ~Selector() = default;

  // Adds the prompt: keys [kv_heads, num_tokens, head_dim], row-major, options().dtype bits. Must
  // be the first call and happen once; num_tokens >= 1; keys finite. On error nothing changes.
  virtual absl::Status Prefill(absl::Span<const uint16_t> keys, int64_t num_tokens) = 0;

  // Adds generated tokens (same layout as Prefill). Requires Prefill and no deferred keys
  // (FailedPrecondition). On error nothing changes.
  virtual absl::Status Append(absl::Span<const uint16_t> keys, int64_t num_tokens) = 0;

  // Late reads, for a caller that reads each step's query and keys back from its device a step
  // late without waiting (the decode worker on a GPU). With TakesLateReads (louiskv with
  // trigger_late, rescoring every resident page, no coverage trigger), a step the trigger does
  // not retrieve at needs neither its query nor its key on the host:
  //   - AppendDeferred adds tokens whose keys come later, oldest first, through SupplyKeys;
  //   - when CanStepLate, BeginSelect(q = {}, closed_form = true) takes the step without its
  //     query (it comes back in closed form) and LateQuery hands that query over before the
  //     next step (the trigger observes it there).
  // Any other step needs its query and every key (SupplyKeys, then Append): a caller asks
  // CanStepLate before each step and reads back what it says. Errors change nothing:
  // FailedPrecondition before Prefill, for AppendDeferred without TakesLateReads, for LateQuery
  // with no query owed, and for a BeginSelect while a query is owed or, without its query or
  // with keys deferred, when CanStepLate is false; InvalidArgument for more keys than deferred,
  // wrong sizes and non-finite values.
  virtual bool TakesLateReads() const { return false; }
  virtual bool CanStepLate() const { return false; }
  virtual absl::Status AppendDeferred(int64_t num_tokens) {
    return absl::FailedPreconditionError("selector: this policy takes no late reads");
  }
  virtual absl::Status SupplyKeys(absl::Span<const uint16_t> keys, int64_t num_tokens) {
    return absl::FailedPreconditionError("selector: no keys are deferred");
  }
  virtual absl::Status LateQuery(absl::Span<const uint16_t> q) {
    return absl::FailedPreconditionError("selector: no query is owed");
  }

  // Selects KV for the query of the newest token: q [q_heads, head_dim] in options().dtype (the
  // bits the kernels see). All tokens appended so
  // far are visible (causal, the query's own token included). Errors: FailedPrecondition before
  // Prefill, InvalidArgument for a wrong q size, a non-finite q, or a budget larger than the
  // visible context or smaller than the always-kept pages. On error the selector's state is
  // unchanged.
  virtual absl::StatusOr<Selection> Select(absl::Span<const uint16_t> q) = 0;

  // Select in two halves, for a caller that computes the exact page scores where the keys are
  // (the decode worker scores on its device): BeginSelect does Select's work up to the exact
  // rescoring (same checks and errors) and returns the pages to score; FinishSelect takes their
  // masses and returns the Selection. Select is BeginSelect, the masses computed on the host over
  // the selector's own keys (kernels::PageMassReference), then FinishSelect: with masses computed
  // the same way both give the same Selection. A policy that rescores nothing (all but kBoundary
  // with rescore_factor > 1) returns an empty request; FinishSelect then takes no masses.
  // A begun selection has taken its step (trigger, retrieval bookkeeping) even if it is never
  // finished; the next BeginSelect abandons it.
  absl::StatusOr<ScoreRequest> BeginSelect(absl::Span<const uint16_t> q) {
    return BeginSelect(q, /*closed_form=*/false);
  }
  // With closed_form, a step that a SteadyRow per KV head describes (louiskv between retrievals
  // when every resident page is rescored) comes back as request.steady, with no pages and no
  // selection left begun: the step is taken (trigger observed). Other steps are as without it.
  virtual absl::StatusOr<ScoreRequest> BeginSelect(absl::Span<const uint16_t> q,
                                                   bool closed_form) = 0;
  // mass[h][i] is the mass (kernels::PageMassParams, the query of BeginSelect, one row per KV
  // head, options().group_reduce) of request.pages[h][i]; every entry of every non-empty head
  // must be given. FailedPrecondition without a begun selection; InvalidArgument for masses that
  // do not match the request or are not finite (the selection stays begun).
  virtual absl::StatusOr<Selection> FinishSelect(absl::Span<const std::vector<float>> mass) = 0;

  // The key summaries this selector scores pages with, by natural page (kernels::PageSummaries
  // layout; host memory, valid until the next Prefill / Append), so a caller can mirror them
  // where it scores (the decode worker's device selection). Unimplemented for a policy without
  // page summaries; FailedPrecondition before Prefill.
  virtual absl::StatusOr<kernels::PageSummaries> Summaries() const {
    return absl::UnimplementedError("this selector keeps no page summaries");
  }

  // The pages the last retrieval made resident for KV head h, ascending, when the policy keeps a
  // resident set that steady steps choose from (louiskv rescoring every resident page); empty
  // otherwise. Valid until the next BeginSelect.
  virtual absl::Span<const int32_t> ResidentPages(int h) const { return {}; }
  // Host memory the selector holds for its sequence (its copy of the keys, summaries, clusters,
  // segment sums; an ANN index's own memory is not counted), for accounting what a policy keeps
  // resident.
  virtual int64_t HostBytes() const = 0;

  // Tokens appended so far (those with deferred keys included).
  virtual int64_t num_tokens() const = 0;
  virtual const SelectorOptions& options() const = 0;
};

// Creates a selector for `policy`; InvalidArgument for bad options.
absl::StatusOr<std::unique_ptr<Selector>> MakeSelector(Policy policy,
                                                       const SelectorOptions& options);

}  // namespace pagoda::retriever

#endif  // PAGODA_RETRIEVER_SELECTOR_H_
