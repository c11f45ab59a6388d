// Diffusion-LM decoding served by Pagoda: one sequence x one layer, FreeCache-style KV reuse.
//
// A diffusion LM writes its response in blocks of `block_tokens` tokens. Within a block, several
// denoising steps re-predict the block's masked tokens; every step's queries (one per position of
// the block) attend bidirectionally to the prompt, the blocks already finalized ("clean") and the
// whole noisy block. The KV of the prompt and of clean blocks does not change across denoising
// steps (FreeCache, Hu et al. 2025; also dKV-Cache, Fast-dLLM's block cache), so here it is
// written once to the store and reused; only the noisy block's KV is rewritten each step, and only
// the pages of it whose bytes changed are re-uploaded into the backend pool. CommitBlock()
// finalizes the block: its pages are committed to the store under chained keys (two-phase write,
// checksummed) and from then on are cached pages like the prompt's.
//
// Pages: the prompt and every block cover whole pages (prompt length and block_tokens are
// multiples of page_tokens), so a block never shares a page with cached tokens. Page i of the
// sequence holds positions [i*P, (i+1)*P).
//
// The session is a thin user of the decode worker (decode_worker.h), one sequence x one layer:
// Prefill opens the sequence in a one-layer worker (a prefix already in the store is reused, not
// rewritten) and writes the rest of the prompt; Denoise is one DecodeWorker::AttendBlock (the
// block's K/V in pool slots the sequence owns, the cached pages the selector picks for the block's
// mean query — one page set per KV head shared by all the block's queries — or every cached page
// when sparse is off, resolved and verified like a decode step's: the pool, else a verified gather
// from the store's host arena, else a verified store read; a page with no verified copy fails the
// step with DataLoss and is never attended); CommitBlock is DecodeWorker::Extend + CommitBlock (the
// block's slots become the cached copies of its committed pages); ReopenBlock is
// DecodeWorker::Truncate. So the pool is head-granular and shared with nothing else here; stats
// count head-pages (one KV head of one page).
//
// Host memory: the session's spans are host memory, so it needs a host backend
// (MakeCpuWorkerBackend()); Create refuses a device backend. An engine on device tensors calls the
// worker's AttendBlock / CommitBlock itself.
//
// Thread safety: not synchronized; one session per (sequence, layer) per thread. The Store may be
// shared with other sessions and threads.
#ifndef PAGODA_CLIENT_DIFFUSION_SESSION_H_
#define PAGODA_CLIENT_DIFFUSION_SESSION_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "pagoda/client/decode_worker.h"
#include "pagoda/client/tensor.h"
#include "pagoda/client/worker_backend.h"
#include "pagoda/kvstore/options.h"
#include "pagoda/kvstore/page.h"
#include "pagoda/kvstore/store.h"
#include "pagoda/retriever/selector.h"

namespace pagoda {

struct DiffusionSessionOptions {
  std::string tenant = "diffusion";
  // Page shape. The store must accept this layout.
  PageLayout layout{DType::kFp16, 4, 64, 16};
  int q_heads = 12;
  // What page keys commit to (ChainPageKey over the token ids): model and layer.
  std::string model_id = "model";
  uint32_t layer = 0;
  // Tokens per block; a multiple of layout.page_tokens. Larger blocks denoise more tokens in
  // parallel but rewrite more bytes per step.
  int32_t block_tokens = 32;

  // Sparse attention over the cached part: a natural-page retriever policy (quest, hierarchical,
  // ann, streaming, oracle) with selector.budget_tokens per KV head (sinks and window included).
  // Off: every cached page is attended (exact, but the pool must hold the whole sequence).
  bool sparse = false;
  retriever::Policy policy = retriever::Policy::kQuest;
  retriever::SelectorOptions selector;

  // Slots of each KV head's sub-pool of the attention pool (head-pages). Must hold one step: the
  // block's pages + the cached pages a head attends (all of them when dense); a step needing more
  // fails with ResourceExhausted and changes nothing. More slots keep more cached pages resident.
  int32_t pool_pages = 512;
  // Pages the sequence may hold (prompt + committed blocks): the quest summary table's size, and
  // what a dense session attends. A Prefill or CommitBlock past it is refused (InvalidArgument /
  // ResourceExhausted, nothing changed).
  int32_t max_pages = 8192;
};

// What one denoising step did. A head-page is one KV head of one page; bytes are page bytes.
struct DiffusionStepStats {
  int32_t queries = 0;              // query tokens (block_tokens)
  int32_t cached_pages = 0;         // cached pages in the sequence (prompt + clean blocks)
  int64_t attended_head_pages = 0;  // head-pages read (cached ones selected + the block's)
  int64_t reused_head_pages = 0;    // cached head-pages attended (read, never rewritten)
  int64_t fetched_head_pages = 0;   // of those, brought into the pool this step
  int64_t pool_hits = 0;            // of those, already resident
  int32_t rewritten_pages = 0;      // block pages written into the pool (their bytes changed)
  uint64_t bytes_reused = 0;        // bytes of the cached head-pages attended
  uint64_t bytes_from_tier[kNumTiers] = {0, 0, 0};  // fetched bytes by the tier they came from
  uint64_t bytes_rewritten = 0;                     // block bytes written into the pool
  uint64_t bytes_uploaded = 0;  // everything copied into the pool (fetched + rewritten)
  bool selected = false;        // a sparse selection ran (budget below the cached context)
  double select_s = 0, transfer_s = 0, attention_s = 0;  // wall time
};

// What CommitBlock did.
struct DiffusionCommitStats {
  int32_t pages = 0;             // pages of the block
  int32_t reused_pages = 0;      // already stored under the same chained key (not rewritten)
  uint64_t bytes_committed = 0;  // page bytes written to the store
};

class DiffusionSession {
 public:
  // Validates options (InvalidArgument naming the field) and creates the session's one-layer
  // decode worker on `backend` (a fresh host backend: InvalidArgument for a device backend, see
  // above). `store` must outlive the session.
  static absl::StatusOr<std::unique_ptr<DiffusionSession>> Create(
      Store* store, std::unique_ptr<WorkerBackend> backend, const DiffusionSessionOptions& options);
  ~DiffusionSession();

  // Adds the prompt: token ids [n], keys and values [kv_heads, n, head_dim] (layout dtype bits,
  // finite), n >= 1 a multiple of page_tokens. Every page is committed to the store (the longest
  // prefix already stored under its chained keys is reused, not rewritten) before this returns.
  // Must be called once, first. InvalidArgument for bad sizes / non-finite values,
  // FailedPrecondition when called twice; on those errors nothing changes.
  absl::Status Prefill(absl::Span<const int32_t> token_ids, absl::Span<const uint16_t> keys,
                       absl::Span<const uint16_t> values);

  // One denoising step of the open block (opening it if none is open): the block's current keys
  // and values [kv_heads, block_tokens, head_dim] and its queries q [block_tokens, q_heads,
  // head_dim] (token-major: token i's query is contiguous). Every query attends the selected
  // cached pages and the whole block (bidirectional, no causal mask). Writes the outputs
  // [block_tokens, q_heads, head_dim] to `out`. Block pages whose bytes equal the last step's
  // are not rewritten (DecodeWorker::AttendBlock's keep_pages).
  // InvalidArgument for bad sizes / non-finite input, FailedPrecondition before Prefill,
  // ResourceExhausted when the step needs more head-pages than a KV head's sub-pool holds: the
  // session is unchanged then (a policy with selection state, e.g. hierarchical's reuse count,
  // may have advanced). Any other error (store, backend; DataLoss when a cached page has no
  // verified copy) leaves the session failed: later calls return FailedPrecondition.
  absl::StatusOr<DiffusionStepStats> Denoise(absl::Span<const uint16_t> q,
                                             absl::Span<const uint16_t> k,
                                             absl::Span<const uint16_t> v,
                                             absl::Span<uint16_t> out);

  // Finalizes the open block with its final token ids [block_tokens]: its pages (the K/V of the
  // last Denoise) are committed to the store under chained keys before this returns and become
  // cached pages (their pool slots are the cached copies: later steps find them resident).
  // FailedPrecondition when no block is open (nothing denoised since the last commit);
  // InvalidArgument for a wrong ids size: nothing changes then. A store error leaves the session
  // failed.
  absl::StatusOr<DiffusionCommitStats> CommitBlock(absl::Span<const int32_t> token_ids);

  // Re-opens the last committed block (e.g. remasking): its pages leave the sequence, the pool and
  // the selector (rebuilt from the pages kept, DecodeWorker::Truncate), and are removed from the
  // store unless they were stored under their keys already when the block was committed (then
  // they are someone else's, and stay). The prompt's and earlier blocks' pages stay as they are.
  // The next Denoise continues that block and writes all its pages. FailedPrecondition when a
  // block is open or no block was committed: nothing changes then.
  absl::Status ReopenBlock();

  // Tokens cached (prompt + clean blocks); the open block is not counted.
  int64_t cached_tokens() const { return cached_pages() * int64_t{page_tokens_}; }
  int32_t cached_pages() const { return static_cast<int32_t>(page_keys_.size()); }
  bool block_open() const { return block_open_; }
  // Keys of the cached pages (page i holds positions [i*P, (i+1)*P)).
  const std::vector<PageKey>& page_keys() const { return page_keys_; }
  // Natural page ids each KV head attended in the last step, ascending (the block's pages last).
  const std::vector<std::vector<int32_t>>& last_rows() const { return rows_; }
  const DiffusionSessionOptions& options() const { return options_; }
  // The worker underneath (its Stats: pool use, pages committed).
  const DecodeWorker& worker() const { return *worker_; }

 private:
  DiffusionSession(Store* store, const DiffusionSessionOptions& options);

  absl::Status CheckFinite(absl::Span<const uint16_t> x, const char* what) const;
  // Packs the block's K/V [kv_heads, block_tokens, head_dim] into store pages.
  void PackBlock(absl::Span<const uint16_t> k, absl::Span<const uint16_t> v, uint8_t* dst) const;
  // A [n, kv_heads, head_dim] view of rows [first, first + n) of x [kv_heads, total, head_dim].
  TensorView TokenRows(const uint16_t* x, int64_t total, int64_t first, int64_t n) const;
  absl::Status Fail(absl::Status s);

  Store* store_;
  DiffusionSessionOptions options_;
  std::unique_ptr<DecodeWorker> worker_;
  SequenceId seq_ = 0;
  uint64_t page_bytes_ = 0;
  int kv_heads_ = 0, head_dim_ = 0, page_tokens_ = 0, block_pages_ = 0;

  bool prefilled_ = false;
  bool failed_ = false;
  bool block_open_ = false;
  std::vector<PageKey> page_keys_;    // cached pages
  std::vector<bool> owned_;           // per cached page: written by this session (not reused)
  std::vector<int32_t> block_sizes_;  // pages of each committed block (prompt excluded)
  std::vector<uint8_t> block_;        // the open block's pages as the worker holds them (empty:
                                      // none there)
  std::vector<std::vector<int32_t>> rows_;
  std::vector<uint8_t> fresh_;  // this step's block pages
};

}  // namespace pagoda

#endif  // PAGODA_CLIENT_DIFFUSION_SESSION_H_
