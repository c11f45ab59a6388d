// Internal: the decode worker's option checks and its per-(sequence, layer) page selection.
#ifndef PAGODA_CLIENT_WORKER_WORKER_SELECT_H_
#define PAGODA_CLIENT_WORKER_WORKER_SELECT_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "pagoda/client/decode_worker.h"
#include "worker_state.h"

namespace pagoda::worker_internal {

// InvalidArgument naming the field for options the worker cannot serve.
absl::Status ValidateWorkerOptions(const DecodeWorkerOptions& o);
// o.selector with its shape fields taken from the layout and q_heads.
retriever::SelectorOptions SelectorShape(const DecodeWorkerOptions& o);
// InvalidArgument when a (host) tensor holds inf or NaN.
absl::Status CheckFinite(const TensorView& t, DType dtype, const char* what);

// Host selection of ls.rows for the query q [q_heads, head_dim] of the newest token (already
// appended), in two halves around louiskv's exact rescoring: page ids per KV head, ascending, the
// open page last. Dense when the budget covers the context (streaming heads of `layer`: sinks and
// window only, always). Page policies: natural pages, the selector's (reused between retrievals
// under the boundary trigger) plus the moving window; BeginRows sets their rows and returns
// whether a fresh retrieval ran. louiskv: pages of its cluster-ordered layout, exactly the
// selector's (see LayerState::layout_keys): BeginRows begins the selector's step, sets `request`
// (the layout pages whose exact masses it wants; may be empty) and returns nullopt; FinishRows,
// given the masses, sets the rows and returns whether a fresh retrieval ran. A step between
// retrievals comes in closed form (request.steady set, listed by ListSteady): no FinishRows; the
// backend scores and chooses (WorkerBackend::AttendBestByMass) and ls.rows is that choice.
absl::StatusOr<std::optional<bool>> BeginRows(const DecodeWorkerOptions& o, int layer,
                                              LayerState& ls, absl::Span<const uint16_t> q,
                                              retriever::ScoreRequest& request);
// A closed-form louiskv step (request.steady set) listed for the backend: request.pages[h] gets
// head h's kept pages (ascending) then its candidates, first_candidate[h] their split; candidates
// the backend holds as ls.held_list are not listed (ls.from_list[h] set). Streaming
// heads of `layer` keep their sinks and window and choose nothing: their SteadyRow becomes
// {sink_end = kept, window_begin = pages = the row's pages, no candidates}, so that for every head
// the attended entries are kept [0, sink_end), the chosen candidates, then kept [sink_end, kept).
void ListSteady(const DecodeWorkerOptions& o, int layer, LayerState& ls,
                retriever::ScoreRequest& request);
absl::StatusOr<bool> FinishRows(const DecodeWorkerOptions& o, int layer, LayerState& ls,
                                absl::Span<const std::vector<float>> mass);

// The pieces of BeginRows that the worker's batched device selection (policy quest) shares:
// DenseRows sets dense rows and returns true when the budget covers the context; RetrievalDue
// says whether a page policy retrieves afresh for q (no selection yet, no trigger, or the trigger
// fires); PageRows turns ls.retrieved into this step's rows (moving window, pinned pages,
// streaming heads).
bool DenseRows(const DecodeWorkerOptions& o, int layer, LayerState& ls);
// Whether the budget covers a context of `tokens` tokens (DenseRows' test).
bool BudgetCovers(const DecodeWorkerOptions& o, int64_t tokens);
absl::StatusOr<bool> RetrievalDue(const DecodeWorkerOptions& o, LayerState& ls,
                                  absl::Span<const uint16_t> q);
absl::Status PageRows(const DecodeWorkerOptions& o, int layer, LayerState& ls);

// A bidirectional block's context rows (DecodeWorker::AttendBlock) over the whole pages of ls
// (ls.tokens a multiple of page_tokens): every page when `dense`, else chosen[h] (ascending page
// ids of the layer) with the pinned pages added; streaming heads of `layer` their sink and window
// pages. The block's own pages are not listed.
std::vector<std::vector<int32_t>> BlockRows(const DecodeWorkerOptions& o, int layer,
                                            const LayerState& ls, bool dense,
                                            std::vector<std::vector<int32_t>> chosen);

// The budget of one Quest retrieval in natural pages, as the retriever's selectors plan it:
// candidates are pages [sink_end, window_begin), kept are the sinks and [window_begin, pages).
struct QuestBudget {
  int32_t pages = 0, sink_end = 0, window_begin = 0, last_len = 0, top_k = 0;
};
absl::StatusOr<QuestBudget> PlanQuestBudget(const DecodeWorkerOptions& o, const LayerState& ls);

}  // namespace pagoda::worker_internal

#endif  // PAGODA_CLIENT_WORKER_WORKER_SELECT_H_
