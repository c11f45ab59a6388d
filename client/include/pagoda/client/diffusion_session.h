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
// sequence holds positions [i*P, (i+1)*P). Cached pages live in the store (host tier, spilling to
// SSD) and are fetched into the pool with LRU slots.
// With a retriever budget, each step attends only the cached pages the selector picks for the
// block's mean query (one page set per KV head shared by all the block's queries, so each page is
// read once) plus the whole noisy block; without (sparse off) it attends every cached page.
//
// Compute: the decode worker's backend (worker_backend.h), the one pool and kernel set every
// attention path of Pagoda uses. Its pool is head-granular; the session keeps it page-granular on
// top: slot s of every KV head's sub-pool holds that head of the same page. A cached page comes in
// through the backend's verified gather from the store's host arena (a read lease; every head
// checked against the head checksum taken when the page was stored), and where that cannot serve
// it (the page is not leasable, a head fails its check) through a store Get (checksummed by the
// store) written with WriteHeads after the same head check; a page no verified copy of which
// exists fails the step with DataLoss and is never attended. Changed block pages are written with
// WriteHeads. A step's attention is one backend call: the block's queries are the batch, every
// row listing the same slots (whole pages), i.e. bidirectional attention over exactly those pages.
//
// Host memory: the session's spans are host memory, so it needs a host backend
// (MakeCpuWorkerBackend()); Create refuses a device backend (the CUDA one takes device tensors).
// Diffusion steps on device tensors (a Denoise over TensorViews: WriteHeads of the block would
// become WriteTokens, the change check a device compare) are not served yet.
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

  // Page slots of the backend pool (slots per KV head's sub-pool; slot s of every head holds the
  // same page, so the pool holds pool_pages whole pages). Must hold one step: block pages + the
  // cached pages a step attends (all of them when dense); a step needing more fails with
  // ResourceExhausted and changes nothing. More slots keep more cached pages resident.
  int32_t pool_pages = 512;
};

// What one denoising step did. Bytes are page bytes.
struct DiffusionStepStats {
  int32_t queries = 0;          // query tokens (block_tokens)
  int32_t attended_pages = 0;   // distinct pages read (cached + block)
  int32_t cached_pages = 0;     // cached pages in the sequence (prompt + clean blocks)
  int32_t reused_pages = 0;     // cached pages attended (read, never rewritten)
  int32_t fetched_pages = 0;    // of those, copied into the pool from the store this step
  int32_t rewritten_pages = 0;  // block pages re-uploaded (their bytes changed)
  uint64_t bytes_reused = 0;    // bytes of the cached pages attended
  uint64_t bytes_from_tier[kNumTiers] = {0, 0, 0};  // fetched bytes by the tier they came from
  uint64_t bytes_rewritten = 0;                     // block bytes uploaded into the pool
  uint64_t bytes_uploaded = 0;  // everything copied into the pool (fetched + rewritten)
  uint64_t summary_bytes = 0;   // summary / index bytes scanned by the selection
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
  // Validates options (InvalidArgument naming the field), creates the selector (when
  // sparse), initializes the backend pool and registers the store's host arena as its gather
  // source. `backend` is a fresh host backend (InvalidArgument for a device backend, see above).
  // `store` must outlive the session.
  static absl::StatusOr<std::unique_ptr<DiffusionSession>> Create(
      Store* store, std::unique_ptr<WorkerBackend> backend, const DiffusionSessionOptions& options);
  ~DiffusionSession();

  // Adds the prompt: token ids [n], keys and values [kv_heads, n, head_dim] (layout dtype bits,
  // finite), n >= 1 a multiple of page_tokens. Every page is committed to the store (a page already
  // stored under its chained key is reused, not rewritten). Must be called once, first.
  // InvalidArgument for bad sizes / non-finite values, FailedPrecondition when called twice; on
  // those errors nothing changes.
  absl::Status Prefill(absl::Span<const int32_t> token_ids, absl::Span<const uint16_t> keys,
                       absl::Span<const uint16_t> values);

  // One denoising step of the open block (opening it if none is open): the block's current keys
  // and values [kv_heads, block_tokens, head_dim] and its queries q [block_tokens, q_heads,
  // head_dim] (token-major: token i's query is contiguous). Every query attends the selected
  // cached pages and the whole block (bidirectional, no causal mask). Writes the outputs
  // [block_tokens, q_heads, head_dim] to `out`. Block pages whose bytes equal the last step's are
  // not re-uploaded.
  // InvalidArgument for bad sizes / non-finite input, FailedPrecondition before Prefill,
  // ResourceExhausted when the step needs more pages than the pool holds: the session is unchanged
  // then (a policy with selection state, e.g. hierarchical's reuse count, may have advanced). Any
  // other error (store, backend; DataLoss when a cached page has no verified copy) leaves the
  // session failed: later calls return FailedPrecondition.
  absl::StatusOr<DiffusionStepStats> Denoise(absl::Span<const uint16_t> q,
                                             absl::Span<const uint16_t> k,
                                             absl::Span<const uint16_t> v,
                                             absl::Span<uint16_t> out);

  // Finalizes the open block with its final token ids [block_tokens]: its pages (the K/V of the
  // last Denoise) are committed to the store under chained keys and become cached pages (reused
  // by later steps, never rewritten). FailedPrecondition when no block is open (nothing denoised
  // since the last commit); InvalidArgument for a wrong ids size: nothing changes then. A store
  // error leaves the session failed.
  absl::StatusOr<DiffusionCommitStats> CommitBlock(absl::Span<const int32_t> token_ids);

  // Re-opens the last committed block (e.g. remasking): its pages are removed from the store and
  // from the selector (a page that was already stored under its key by someone else, and so
  // reused, is left in the store); the prompt's and earlier blocks' pages stay as they are. The
  // next Denoise continues that block (pages whose bytes are unchanged are not re-uploaded).
  // FailedPrecondition when a block is open or no block was committed: nothing changes then.
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

 private:
  DiffusionSession(Store* store, std::unique_ptr<WorkerBackend> backend,
                   const DiffusionSessionOptions& options);

  absl::Status CheckFinite(absl::Span<const uint16_t> x, const char* what) const;
  // Packs `n` tokens of K/V [kv_heads, n, head_dim] from token `first` into store pages.
  void PackPages(absl::Span<const uint16_t> k, absl::Span<const uint16_t> v, int64_t n,
                 int64_t first, int64_t pages, uint8_t* dst) const;
  // Puts a page and appends its kv_heads head checksums to `sums` (of the stored bytes when the
  // key was stored already: those are what later fetches read).
  absl::Status PutPage(const PageKey& key, absl::Span<const uint8_t> bytes, bool* reused,
                       std::vector<uint64_t>* sums);
  // The head-pages of store page `page` in WriteHeads order (per head K then V).
  void HeadBytes(const uint8_t* page, uint8_t* dst) const;
  // Fetches cached pages[i] into slot slots[i] of every head (verified; see the file comment).
  absl::Status FetchPages(absl::Span<const int32_t> pages, absl::Span<const int32_t> slots,
                          DiffusionStepStats* stats);
  absl::Status SelectRows(absl::Span<const uint16_t> q, DiffusionStepStats* stats);
  int32_t TakeSlot(const std::vector<bool>& busy);
  absl::Status RebuildSelector();

  Store* store_;
  std::unique_ptr<WorkerBackend> backend_;
  DiffusionSessionOptions options_;
  std::unique_ptr<retriever::Selector> selector_;  // null when dense
  uint64_t page_bytes_ = 0;
  int64_t half_bytes_ = 0;  // one head's K (or V) of one page
  int kv_heads_ = 0, head_dim_ = 0, page_tokens_ = 0, block_pages_ = 0;

  bool registered_ = false;  // the store's host arena is the backend's gather source
  bool prefilled_ = false;
  bool failed_ = false;
  bool block_open_ = false;
  std::vector<PageKey> page_keys_;    // cached pages
  std::vector<bool> owned_;           // per cached page: written by this session (not reused)
  std::vector<uint64_t> sums_;        // per cached page and KV head: HeadPageChecksum
  std::vector<int32_t> block_sizes_;  // pages of each committed block (prompt excluded)
  std::vector<uint8_t> block_;        // the open block's pages, as uploaded by the last step
  std::vector<uint16_t> cached_k_;    // cached keys [page][kv_heads][P][d] (sparse mode only)
  std::vector<std::vector<int32_t>> rows_;

  // Pool bookkeeping: slot of each natural page (-1: not resident), page in each slot (-1: free),
  // last step each slot was used (LRU).
  std::vector<int32_t> slot_of_page_;
  std::vector<int32_t> page_of_slot_;
  std::vector<int64_t> slot_used_;
  int64_t step_ = 0;
  std::vector<uint8_t> heads_;  // WriteHeads staging
  std::vector<uint8_t> fresh_;  // this step's block pages
};

}  // namespace pagoda

#endif  // PAGODA_CLIENT_DIFFUSION_SESSION_H_
