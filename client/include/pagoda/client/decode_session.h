// Sparse decode steps served by Pagoda for one sequence x one layer: a convenience over the
// decode worker (decode_worker.h), which it drives with a batch of one and one layer. Every step
// runs the worker's path: the new token's K/V join the open page, the retriever selects pages
// (louiskv included; with the boundary trigger a fresh retrieval runs only when the query
// drifts), missing head-pages are gathered from the store's host arena into the worker's pool and
// verified against the checksums taken when they were written (a mismatch is read again through
// the store; no verified copy fails the step with DataLoss and nothing is attended), the sparse
// decode kernel attends, and full pages are committed to the store (two-phase, checksummed).
// Rolling-window streams (StreamOptions): pages go to a store stream, so pages that leave the
// window leave the store; the prompt's pages can be pinned and are then attended every step.
//
// Engines serving many sequences and layers use DecodeWorker directly.
//
// Thread safety: not synchronized; one session per (sequence, layer) per thread. The Store may be
// shared with other sessions and threads.
#ifndef PAGODA_CLIENT_DECODE_SESSION_H_
#define PAGODA_CLIENT_DECODE_SESSION_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "pagoda/client/decode_worker.h"
#include "pagoda/client/worker_backend.h"
#include "pagoda/kvstore/options.h"
#include "pagoda/kvstore/page.h"
#include "pagoda/kvstore/store.h"
#include "pagoda/retriever/boundary_trigger.h"
#include "pagoda/retriever/selector.h"

namespace pagoda {

struct DecodeSessionOptions {
  std::string tenant = "decode";
  // Page shape; layout.kv_heads / head_dim / page_tokens override the selector's shape fields.
  // The store must accept this layout.
  PageLayout layout{DType::kFp16, 4, 64, 16};
  int q_heads = 12;
  // What page keys commit to (ChainPageKey over the token ids): model and layer.
  std::string model_id = "model";
  uint32_t layer = 0;

  // Retriever policy and its knobs (every policy; louiskv attends pages of its cluster-ordered
  // layout, which the worker writes to the store beside the natural pages, see decode_worker.h;
  // it refuses pin_prefix).
  retriever::Policy policy = retriever::Policy::kQuest;
  retriever::SelectorOptions selector;
  // LouisKV boundary trigger: re-run the retrieval only when the mean cosine between the query of
  // the last retrieval and this step's query drops below the threshold. Off: retrieve every step.
  bool boundary_trigger = true;
  float boundary_threshold = 0.9f;  // higher follows the query more closely, retrieves more often

  // Slots per KV head of the worker's head-granular pool (the GPU budget is kv_heads x this x one
  // head-page). Must hold one step: budget pages + window pages + 2 (+ pinned prefix pages); more
  // slots keep more pages resident.
  int32_t pool_pages = 512;
  // Prefetch hints (from the selection) promoted from SSD to host each retrieval. 0: none.
  bool prefetch = true;

  // Rolling-window stream: when set, pages go to store stream `stream_id` with these options (the
  // store drops pages that leave the window; the selector must then keep only sinks + window:
  // policy kStreaming with sink_pages == stream.sink_pages, window_pages <= stream.window_pages).
  std::optional<StreamOptions> stream;
  uint64_t stream_id = 1;
  // Pin the prompt's full pages in the store and attend them every step (a pinned prefix, e.g. a
  // system prompt). Counts against the tenant's pin quota.
  bool pin_prefix = false;
};

// What one step did. Bytes are page bytes.
struct DecodeStepStats {
  bool retrieved = false;       // a fresh selection ran (else the last one was reused)
  int32_t attended_pages = 0;   // distinct pages the step read (all rows)
  int32_t attended_tokens = 0;  // tokens attended, summed over rows
  int32_t fetched_pages = 0;    // head-pages gathered into the pool this step
  uint64_t bytes_from_tier[kNumTiers] = {0, 0, 0};  // fetched bytes by the tier they came from
  uint64_t bytes_committed = 0;  // bytes of the page committed this step (0 or a page)
  int32_t verify_failures = 0;   // gathered head-pages that failed verification (then re-read)
  double select_s = 0, transfer_s = 0, attention_s = 0, append_s = 0;  // wall time
};

class DecodeSession {
 public:
  // Validates options (InvalidArgument naming the field) and creates the worker on `backend`
  // (MakeCpuWorkerBackend() or MakeCudaWorkerBackend(); the CUDA one takes device tensors, so the
  // session's host spans need the CPU backend). `store` must outlive the session.
  static absl::StatusOr<std::unique_ptr<DecodeSession>> Create(
      Store* store, std::unique_ptr<WorkerBackend> backend, const DecodeSessionOptions& options);
  ~DecodeSession();

  // Adds the prompt: token ids [n], keys and values [kv_heads, n, head_dim] (layout dtype bits,
  // finite). Pages already stored under their chained keys are reused (not rewritten); the other
  // full pages are committed before this returns; the rest starts the open page. Once, first.
  // InvalidArgument for bad sizes / non-finite values, FailedPrecondition when called twice.
  absl::Status Prefill(absl::Span<const int32_t> token_ids, absl::Span<const uint16_t> keys,
                       absl::Span<const uint16_t> values);

  // One decode step for the newest token: its id, its query q [q_heads, head_dim] and its key and
  // value [kv_heads, head_dim]. Writes the attention output [q_heads, head_dim] to `out` (only on
  // success). InvalidArgument for bad sizes / non-finite input and FailedPrecondition before
  // Prefill: the session is unchanged then. Any other error (DataLoss, a store failure) leaves
  // the session failed: later calls return FailedPrecondition.
  absl::StatusOr<DecodeStepStats> Step(int32_t token_id, absl::Span<const uint16_t> q,
                                       absl::Span<const uint16_t> k, absl::Span<const uint16_t> v,
                                       absl::Span<uint16_t> out);

  // Tokens in the sequence (prompt + generated).
  int64_t num_tokens() const;
  // Keys of the full pages (page i holds positions [i*P, (i+1)*P)).
  std::vector<PageKey> page_keys() const;
  // The page ids each KV head attended in the last step, ascending; the last one is the open page
  // and holds last_page_tokens() tokens, every other one a full page. Natural pages (page i holds
  // positions [i*P, (i+1)*P)), except with policy louiskv (DecodeWorker::LastRows).
  std::vector<std::vector<int32_t>> last_rows() const;
  int32_t last_page_tokens() const;
  const DecodeSessionOptions& options() const { return options_; }
  // The worker underneath (stats, pool).
  DecodeWorker& worker() { return *worker_; }

 private:
  DecodeSession(std::unique_ptr<DecodeWorker> worker, const DecodeSessionOptions& options)
      : worker_(std::move(worker)), options_(options) {}

  std::unique_ptr<DecodeWorker> worker_;
  DecodeSessionOptions options_;
  SequenceId seq_ = 0;  // 0 before Prefill
  bool failed_ = false;
  std::vector<uint16_t> out_;  // the step's output before it is known to be good
};

}  // namespace pagoda

#endif  // PAGODA_CLIENT_DECODE_SESSION_H_
