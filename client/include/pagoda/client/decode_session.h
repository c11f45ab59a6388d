// Sparse decode steps served by Pagoda: one sequence x one layer.
//
// The KV pages of the sequence live in a pagoda::Store (host and SSD tiers hold them; an embedded
// Store, or the one inside pagodad). A DecodeBackend holds a pool of `pool_pages` page slots (the
// GPU page budget). Each Step():
//   1. appends the new token's K/V to the open (partial) page and to the retriever's summaries;
//   2. selection: the retriever policy picks pages per KV head; with the LouisKV boundary trigger
//      a fresh retrieval runs only when the query drifts, else the last retrieved pages are reused
//      (plus the sliding local window);
//   3. transfer: pages missing from the pool are read from the store (checksummed) into one
//      staging buffer (the backend's pinned one where it offers it, so no extra host copy) and
//      copied into free / least-recently-used slots in ONE batched upload;
//      prefetch hints are promoted from SSD to host for the next steps;
//   4. attention: the sparse decode kernel over the pool, one page row per KV head;
//   5. when the open page is full it is committed to the store (two-phase write, checksummed).
// Rolling-window streams (StreamOptions): pages are written to a store stream, so pages that leave
// the window leave the store; the prompt's pages can be pinned and are then attended every step.
//
// Thread safety: not synchronized; one session per (sequence, layer) per thread. The Store may be
// shared with other sessions and threads.
#ifndef PAGODA_CLIENT_DECODE_SESSION_H_
#define PAGODA_CLIENT_DECODE_SESSION_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "pagoda/client/decode_backend.h"
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

  // Retriever policy and its knobs (natural-page policies: quest, hierarchical, ann, streaming,
  // oracle; the louiskv policy's cluster layout is not a store layout and is refused).
  retriever::Policy policy = retriever::Policy::kQuest;
  retriever::SelectorOptions selector;
  // LouisKV boundary trigger: re-run the retrieval only when the mean cosine between the query of
  // the last retrieval and this step's query drops below the threshold. Off: retrieve every step.
  bool boundary_trigger = true;
  float boundary_threshold = 0.9f;  // higher follows the query more closely, retrieves more often

  // Page slots of the backend pool (the GPU budget). Must hold one step's pages: at least
  // kv_heads * budget pages + pinned prefix pages + 1; more slots keep more pages resident.
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
  int32_t fetched_pages = 0;    // pages copied into the pool this step (open page excluded)
  uint64_t bytes_from_tier[kNumTiers] = {0, 0, 0};  // fetched bytes by the tier they came from
  uint64_t bytes_uploaded = 0;   // bytes copied into the pool, open page included
  uint64_t bytes_committed = 0;  // bytes of the page committed this step (0 or a page)
  uint64_t summary_bytes = 0;    // summary / index bytes scanned by the selection
  double select_s = 0, transfer_s = 0, attention_s = 0, append_s = 0;  // wall time
};

class DecodeSession {
 public:
  // Validates options (InvalidArgument naming the field), creates the selector, initializes the
  // backend pool and (stream mode) opens the store stream. `store` must outlive the session.
  static absl::StatusOr<std::unique_ptr<DecodeSession>> Create(
      Store* store, std::unique_ptr<DecodeBackend> backend, const DecodeSessionOptions& options);
  ~DecodeSession();

  // Adds the prompt: token ids [n], keys and values [kv_heads, n, head_dim] (layout dtype bits,
  // finite). Full pages are committed to the store (a page already stored under its chained key is
  // reused, not rewritten); the rest starts the open page. Must be called once, first.
  // InvalidArgument for bad sizes / non-finite values, FailedPrecondition when called twice.
  absl::Status Prefill(absl::Span<const int32_t> token_ids, absl::Span<const uint16_t> keys,
                       absl::Span<const uint16_t> values);

  // One decode step for the newest token: its id, its query q [q_heads, head_dim] and its key and
  // value [kv_heads, head_dim]. Writes the attention output [q_heads, head_dim] to `out`.
  // InvalidArgument for bad sizes / non-finite input and FailedPrecondition before Prefill: the
  // session is unchanged then. Any other error (a store or backend failure) leaves the session
  // failed: later calls return FailedPrecondition.
  absl::StatusOr<DecodeStepStats> Step(int32_t token_id, absl::Span<const uint16_t> q,
                                       absl::Span<const uint16_t> k, absl::Span<const uint16_t> v,
                                       absl::Span<uint16_t> out);

  // Tokens in the sequence (prompt + generated).
  int64_t num_tokens() const { return num_tokens_; }
  // Full pages committed so far, and their keys (page i holds positions [i*P, (i+1)*P)).
  const std::vector<PageKey>& page_keys() const { return page_keys_; }
  // The natural page ids each KV head attended in the last step, ascending; the last one is the
  // open page and holds last_page_tokens() tokens, every other one a full page.
  const std::vector<std::vector<int32_t>>& last_rows() const { return rows_; }
  int32_t last_page_tokens() const { return last_page_tokens_; }
  const DecodeSessionOptions& options() const { return options_; }

 private:
  DecodeSession(Store* store, std::unique_ptr<DecodeBackend> backend,
                const DecodeSessionOptions& options);

  absl::Status CheckFinite(absl::Span<const uint16_t> x, const char* what) const;
  void WriteToken(const uint16_t* k, const uint16_t* v, int64_t k_stride, int64_t token);
  absl::Status CommitPage(int32_t page, absl::Span<const int32_t> ids, DecodeStepStats* stats);
  absl::Status SelectRows(absl::Span<const uint16_t> q, DecodeStepStats* stats);
  absl::Status FetchRows(DecodeStepStats* stats);
  int32_t TakeSlot();

  Store* store_;
  std::unique_ptr<DecodeBackend> backend_;
  DecodeSessionOptions options_;
  std::unique_ptr<retriever::Selector> selector_;
  std::optional<retriever::BoundaryTrigger> trigger_;
  uint64_t page_bytes_ = 0;
  int kv_heads_ = 0, head_dim_ = 0, page_tokens_ = 0;

  bool prefilled_ = false;
  bool failed_ = false;
  int64_t num_tokens_ = 0;
  std::vector<PageKey> page_keys_;
  int32_t prefix_pages_ = 0;                     // pinned prefix pages (pin_prefix)
  std::vector<int32_t> tail_ids_;                // token ids of the open page
  std::vector<uint8_t> tail_;                    // the open page's bytes
  int32_t last_page_tokens_ = 0;                 // tokens of the open page in the last step
  int32_t tail_tokens_ = 0;                      // tokens in the open page
  std::vector<std::vector<int32_t>> retrieved_;  // per row: pages of the last retrieval
  std::vector<std::vector<int32_t>> rows_;       // per row: pages attended by the last step
  std::vector<std::vector<int32_t>> prefetch_;   // per row: hints of the last retrieval

  // Pool bookkeeping: slot of each natural page (-1: not resident), page in each slot (-1: free),
  // last step each slot was used (LRU).
  std::vector<int32_t> slot_of_page_;
  std::vector<int32_t> page_of_slot_;
  std::vector<int64_t> slot_used_;
  int64_t step_ = 0;
  std::vector<uint8_t> staging_;  // used when the backend offers no StagingBuffer
  std::vector<float> qf_;
};

}  // namespace pagoda

#endif  // PAGODA_CLIENT_DECODE_SESSION_H_
