// Internal: the decode worker's option checks and its per-(sequence, layer) page selection.
#ifndef PAGODA_CLIENT_WORKER_WORKER_SELECT_H_
#define PAGODA_CLIENT_WORKER_WORKER_SELECT_H_

#include <cstdint>

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

// Sets ls.rows for the query q [q_heads, head_dim] of the newest token (already appended):
// natural page ids per KV head, ascending, the open page last. Dense when the budget covers the
// context (streaming heads of `layer`: sinks and window only, always). Page policies: the
// selector's pages (reused between retrievals under the boundary trigger) plus the moving window.
// louiskv: its spans (true positions) mapped onto natural pages: sinks and window first, then the
// pages holding most selected tokens, up to the budget. Returns whether a fresh retrieval ran.
absl::StatusOr<bool> SelectRows(const DecodeWorkerOptions& o, int layer, LayerState& ls,
                                absl::Span<const uint16_t> q);

}  // namespace pagoda::worker_internal

#endif  // PAGODA_CLIENT_WORKER_WORKER_SELECT_H_
