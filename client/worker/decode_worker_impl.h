// Internal: the decode worker's implementation class, shared by the files that define its parts
// (decode_worker.cc: sequences, prefill writes, steps; prefill_attend.cc: prefill attention).
#ifndef PAGODA_CLIENT_WORKER_DECODE_WORKER_IMPL_H_
#define PAGODA_CLIENT_WORKER_DECODE_WORKER_IMPL_H_

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "head_pool.h"
#include "page_committer.h"
#include "pagoda/client/decode_worker.h"
#include "pagoda/kvstore/prefix.h"
#include "task_pool.h"
#include "worker_state.h"

namespace pagoda {

namespace worker_internal {

using Clock = std::chrono::steady_clock;
inline double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

inline int SelectThreads(int asked) {
  if (asked > 0) return asked;
  return static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 8u));
}

// Layout pages (policy louiskv): their keys' hash seed (apart from natural pages' keys) and
// format version (bump it when the page assembly changes: a stored layout page must hold exactly
// what this code would write under its key).
constexpr uint64_t kLayoutPageKeySeed = 0x6c6f7569736b7631ULL;  // "louiskv1"
constexpr int32_t kLayoutFormat = 1;

// How long one fetch waits, in all, for pages another writer has reserved but not committed yet
// (a prefix two workers prefill at once) before a page that stays unreadable counts as lost.
constexpr absl::Duration kInFlightWait = absl::Seconds(2);

// A layer's fetch list is leased and gathered in up to kGatherChunks chunks of at least
// kGatherChunk head-pages (the store leases one chunk while the device gathers the one before).
constexpr size_t kGatherChunk = 512;
constexpr size_t kGatherChunks = 4;

// Rows [first, first + count) of a [n, ...] view.
inline TensorView Rows(const TensorView& t, int64_t first, int64_t count) {
  TensorView r = t;
  r.data = static_cast<uint16_t*>(t.data) + first * t.strides[0];
  r.shape[0] = count;
  return r;
}

}  // namespace worker_internal

class DecodeWorker::Impl {
 public:
  Impl(Store* store, std::unique_ptr<WorkerBackend> backend, const DecodeWorkerOptions& o)
      : store_(store),
        backend_(std::move(backend)),
        o_(o),
        kv_(static_cast<int>(o.layout.kv_heads)),
        d_(static_cast<int>(o.layout.head_dim)),
        P_(static_cast<int>(o.layout.page_tokens)),
        half_(int64_t{o.layout.page_tokens} * o.layout.head_dim * 2),
        pool_(kv_, o.pool_slots_per_head),
        committer_(store, o.tenant, o.layout),
        device_select_(o.policy == retriever::Policy::kQuest),
        layout_pages_(o.policy == retriever::Policy::kBoundary),
        select_pool_(worker_internal::SelectThreads(o.select_threads)),
        q_pending_(o.num_layers),
        late_pending_(o.num_layers),
        steady_batch_(o.num_layers) {}

  absl::Status Init();
  absl::StatusOr<OpenedSequence> Open(absl::Span<const int32_t> token_ids);
  absl::Status Prefill(SequenceId id, int layer, const TensorView& k, const TensorView& v);
  absl::Status PrefillAttend(SequenceId id, int layer, const TensorView& q, const TensorView& k,
                             const TensorView& v, const TensorView& o);
  absl::StatusOr<SequenceId> Fork(SequenceId parent);
  absl::Status Close(SequenceId id);
  absl::StatusOr<StepPlan> Plan(absl::Span<const SequenceId> ids,
                                absl::Span<const int32_t> token_ids);
  absl::Status Attend(const StepPlan& plan, int layer, const TensorView& q, const TensorView& k,
                      const TensorView& v, const TensorView& o);
  absl::Status Replayed(const StepPlan& plan);
  absl::StatusOr<WorkerStepStats> Finish(const StepPlan& plan);
  absl::Status Flush();
  absl::Status Extend(SequenceId id, absl::Span<const int32_t> token_ids);
  absl::Status Truncate(SequenceId id, int64_t tokens);
  absl::StatusOr<WorkerStepStats> AttendBlock(SequenceId id, int layer, const TensorView& q,
                                              const TensorView& k, const TensorView& v,
                                              const TensorView& o,
                                              absl::Span<const uint8_t> keep_pages);
  absl::Status CommitBlock(SequenceId id, int layer);
  absl::StatusOr<int64_t> Length(SequenceId id, int layer) const;
  absl::StatusOr<std::vector<std::vector<int32_t>>> LastRows(SequenceId id, int layer) const;
  absl::StatusOr<std::vector<PageKey>> PageKeys(SequenceId id, int layer) const;
  absl::StatusOr<std::vector<std::vector<int64_t>>> AttendedPositions(SequenceId id,
                                                                      int layer) const;
  absl::StatusOr<std::vector<PageKey>> LayoutPageKeys(SequenceId id, int layer) const;
  WorkerStats Stats() const;
  const DecodeWorkerOptions& options() const { return o_; }

 private:
  PageKeyExtra Extra(int layer) const {
    return {o_.model_id, o_.first_layer + static_cast<uint32_t>(layer), o_.salt};
  }
  // Unpins a sequence's pinned pages and closes its streams (best effort: Close must not fail).
  void Release(worker_internal::Sequence& seq);
  // The sequence `id` for a call `what` on `layer` outside a step: FailedPrecondition inside a step
  // or for a failed sequence, InvalidArgument for an unknown id or a layer out of range.
  absl::StatusOr<worker_internal::Sequence*> Usable(SequenceId id, int layer, const char* what);
  // The same without a layer.
  absl::StatusOr<worker_internal::Sequence*> Usable(SequenceId id, const char* what);
  // The rows T of a chunk's q / o [T, q_heads, d] and k / v [T, kv_heads, d] (PrefillAttend,
  // AttendBlock): InvalidArgument naming the tensor for a shape, dtype or device that disagrees.
  absl::StatusOr<int64_t> ChunkRows(const TensorView& q, const TensorView& k, const TensorView& v,
                                    const TensorView& o) const;
  // The sequence `id` for Extend / Truncate: InvalidArgument / FailedPrecondition / Unimplemented
  // for what they do not serve (see decode_worker.h).
  absl::StatusOr<worker_internal::Sequence*> Editable(SequenceId id, const char* what);
  // Frees the owned slots of the layer's block (AttendBlock).
  void ReleaseBlock(worker_internal::LayerState& ls);
  // The mean over a block's queries q [N, q_heads, d] (any device), as [q_heads * d] elements of
  // the layout dtype.
  absl::StatusOr<std::vector<uint16_t>> MeanQuery(const TensorView& q);
  absl::StatusOr<worker_internal::Sequence*> Find(SequenceId id);
  const worker_internal::Sequence* Lookup(SequenceId id) const;
  // Applies commit failures to their sequences.
  void DrainCommits();
  // Device selection (policy quest): the summary slot of the next natural page of `ls` (the
  // caller checked that one is free).
  int32_t NewSummarySlot(worker_internal::LayerState& ls);
  // Device selection: the min / max keys of a full store page (the store's layout) per KV head,
  // appended to mins / maxs ([kv_heads, head_dim] rows).
  void PageMinMax(const uint8_t* page, std::vector<uint16_t>& mins,
                  std::vector<uint16_t>& maxs) const;
  // Device selection: the next natural pages of `ls` (full pages, one per row of mins / maxs)
  // get summary slots and their summaries, in one backend call. ResourceExhausted when the table
  // has no room.
  absl::Status AddSummaries(worker_internal::LayerState& ls, const std::vector<uint16_t>& mins,
                            const std::vector<uint16_t>& maxs);
  // Device selection: folds tokens [from, to) of the open page of each listed state (in its pool
  // slots ls.tail) into the page's summary, giving the page a summary slot when from == 0.
  absl::Status FoldOpenPages(absl::Span<worker_internal::LayerState* const> states,
                             absl::Span<const int32_t> from, absl::Span<const int32_t> to);
  // Device selection for the batch's sequences whose status is OK: rows for every one;
  // fresh[b] says whether row b retrieved afresh.
  void SelectOnBackend(int layer, const TensorView& q, std::vector<absl::Status>& status,
                       WorkerStepStats& stats, std::vector<bool>& fresh);
  // Device selection with the boundary trigger: feeds the trigger of each sequence the query its
  // previous step of `layer` left in the backend's copy (read without a sync a step later), and
  // starts the copy of this step's. A trigger that fires marks its layer state boundary_seen; a
  // sequence whose query the trigger refuses fails its step.
  // Reads the last step's queries of `layer` back (their copies, started without a sync) into
  // the boundary triggers of the rows that took them (Plan, before anything is decided).
  void ObserveQueries(int layer);
  // The open pages' summary slots for folds starting at `from` (a fresh slot where from is 0).
  void FoldSlots(absl::Span<worker_internal::LayerState* const> states,
                 absl::Span<const int32_t> from, std::vector<int32_t>& sum_slots);
  // The append of the plan's new tokens to `layer`: their open pages' slots and positions and,
  // with device selection, the summary folds, into out's token / fold fields; the layers' token
  // counts move on. Nothing is enqueued.
  absl::Status AppendArgs(int layer, StagedLayer& out);
  // The page table of `layer` from head_res_ (ResolveLayer's slots; failed rows empty).
  void BuildTable(int layer, WorkerStepStats& stats, std::vector<int32_t>& indptr,
                  std::vector<int32_t>& indices, std::vector<int32_t>& last_len) const;
  // Records a store page's heads: checksums and (prompt) keys, and values for louiskv.
  void TakePage(worker_internal::LayerState& ls, const uint8_t* page, bool keep_keys);
  // Appends `tokens` rows of KV head h's keys (and, for louiskv's layout pages, values) to the
  // prompt rows ls keeps until its selector starts.
  void KeepPromptRows(worker_internal::LayerState& ls, int h, const uint8_t* k, const uint8_t* v,
                      int64_t tokens);
  // The head checksums of a store page: sums[h] for KV head h.
  void HeadSums(const uint8_t* page, uint64_t* sums) const;
  // A store page (a committer buffer) from kv_heads pool slots' bytes (K then V per head).
  std::vector<uint8_t> PageFromSlots(const uint8_t* slots);
  // Owned slots for the open page of `ls` (allocated when missing).
  absl::Status EnsureTail(worker_internal::LayerState& ls);
  // The open page of (seq, layer) is full: its head-pages are read from the pool, checksummed,
  // queued for the store, and its slots become the page's cached copy.
  absl::Status CommitTail(SequenceId id, worker_internal::Sequence& seq, int layer);
  // The open page's owned slots become the cached copy of page p of `ls` under `key` (remembered
  // in ls.seen); the row has no open page after.
  void AdoptTail(worker_internal::LayerState& ls, int32_t p, const PageKey& key);
  // The decode step's CommitTail: the page's key, pins and pool adoption now; its bytes come back
  // from the pool without a sync (StartReadHeads) and are checksummed and queued in Finish.
  absl::Status CommitTailLater(SequenceId id, worker_internal::Sequence& seq, int layer,
                               WorkerStepStats& stats);
  // Finish's half of CommitTailLater for every page of the step; failures fail their sequences.
  void CompleteCommits();
  // Chains the next page of (seq, layer) to the layer's keys, records its checksums (and prompt
  // keys for host selection) and queues it for the store. Returns its key.
  PageKey QueuePage(SequenceId id, worker_internal::Sequence& seq, int layer,
                    std::vector<uint8_t> page);
  // Prefill rows that fill whole pages (k, v: [pages * page_tokens, kv_heads, head_dim], starting
  // at a page boundary): the store reserves a host-tier slot per page, the backend writes the pages
  // there with their head checksums (on CUDA straight from the device), the committer commits
  // them off this thread; summaries (device selection) are computed on the backend from the rows.
  // A Reserve error (a full host tier) is returned; slots not yet handed over are aborted.
  absl::Status StagePages(SequenceId id, worker_internal::Sequence& seq, int layer,
                          const TensorView& k, const TensorView& v);
  // prefill_to_pool: pages [i0, i1) of k / v (rows i * page_tokens ...) under `keys` go into free
  // pool slots (one WriteTokens), as many leading ones as every head has a free slot for; a page
  // already cached keeps its slot (rewritten with the same bytes). Page i is page first + i of
  // `ls`, which remembers where it went (LayerState::seen).
  absl::Status PagesToPool(const TensorView& k, const TensorView& v, int32_t i0, int32_t i1,
                           const std::vector<PageKey>& keys, worker_internal::LayerState& ls,
                           int64_t first);
  // The layer's prompt is complete: host selection hands its keys to a new selector (device
  // selection has its summaries already); the boundary trigger starts.
  absl::Status StartSelector(SequenceId id, worker_internal::LayerState& ls, int layer);
  // louiskv: the cluster-ordered layout pages of the prompt whose clusters, keys and values ls
  // holds: assembled, checksummed and queued for the store.
  absl::Status WriteLayoutPages(SequenceId id, worker_internal::LayerState& ls, int layer);
  absl::Status LoadCachedPages(worker_internal::Sequence& seq, int layer, int64_t pages);
  // louiskv's exact rescoring for a layer's batch: the pages each begun selection asks to score
  // (requests[b], empty for rows not begun) get pool slots (gathered and verified when missing,
  // used in this layer's epoch), one backend call scores them for q, and masses[b] gets row b's
  // masses per KV head. Sequences that cannot be served are marked in status.
  // Closed-form rows (steady_) are resolved only: their slots go to steady_slots_ and the
  // backend scores them with the attention (AttendChosen).
  void ScoreRequests(int layer, const TensorView& q,
                     const std::vector<retriever::ScoreRequest>& requests,
                     std::vector<absl::Status>& status,
                     std::vector<std::vector<std::vector<float>>>& masses, WorkerStepStats& stats);
  // Step 4 for a batch with closed-form louiskv rows (steady_): one AttendBestByMass over every
  // row (the others as kept entries), the closed-form rows' choices left pending (under the
  // layer's choice tag) for ChosenRows; it also starts the layer's late reads of q and k.
  absl::Status AttendChosen(int layer, const TensorView& q, const TensorView& k,
                            std::vector<retriever::ScoreRequest>& requests, const TensorView& o);
  // Reads back the pending choices of the layer's last AttendChosen for sequences outside the
  // current batch (before the layer's next choice replaces them).
  void SettleChoices(int layer);
  // ls.rows, or the pending choice of its last closed-form step when not read back yet.
  absl::StatusOr<std::vector<std::vector<int32_t>>> ChosenRows(
      const worker_internal::LayerState& ls, int layer) const;
  // Step 5: commits the open pages this token filled (the committer puts them off this thread).
  absl::Status CommitFilled(int layer, WorkerStepStats& stats);
  // Where a fetched head-page comes from: the batch row whose step fails when it cannot be
  // verified, its store key, and page `page` of `ls`, whose arena hint the fetch reads and
  // renews (ls null: no hint, the page is leased).
  struct FetchOrigin {
    int32_t row;
    PageKey key;
    worker_internal::LayerState* ls;
    int32_t page;
  };
  // Verified head-pages for the fetch list (origins[i] says where fetches[i] comes from);
  // failures fall back to a store read. Marks the rows that cannot be served.
  void Fetch(int layer, const std::vector<FetchOrigin>& origins, std::vector<HeadFetch>& fetches,
             std::vector<absl::Status>& step_status, WorkerStepStats& stats);
  int64_t RowBound(const worker_internal::Sequence& seq) const;
  // Staged steps (staged_step.cc): whether the batch's step can be planned whole (quest, no
  // retrieval in any (sequence, layer), room in the pool for every layer's pages at once: `need`
  // per layer besides `open_pages`); the whole step's host work, staged on the backend (returns
  // the staging generation); and a staged step's layer.
  bool CanStage(absl::Span<const SequenceId> ids, int64_t need, int64_t open_pages) const;
  absl::StatusOr<uint64_t> StageStep();
  absl::Status AttendStagedLayer(int layer, const TensorView& q, const TensorView& k,
                                 const TensorView& v, const TensorView& o);
  bool staged_ = false;       // the planned step is staged
  bool staged_last_ = false;  // the last step was (its q copies: read after a stream sync)

  Store* const store_;
  std::unique_ptr<WorkerBackend> backend_;
  const DecodeWorkerOptions o_;
  const int kv_, d_, P_;
  const int64_t half_;
  worker_internal::HeadPool pool_;
  worker_internal::PageCommitter committer_;
  absl::flat_hash_map<SequenceId, worker_internal::Sequence> seqs_;
  SequenceId next_id_ = 1;
  uint64_t epoch_ = 0;

  // The step in progress.
  uint64_t next_plan_ = 1;
  uint64_t plan_id_ = 0;
  std::vector<SequenceId> plan_seqs_;
  std::vector<bool> layer_done_;
  std::vector<absl::Status> step_status_;
  WorkerStepStats step_stats_;

  // Device selection (policy quest): the summary table's free slots and, per slot, its page.
  const bool device_select_;
  // Policy louiskv: each (sequence, layer) writes its prompt's cluster-ordered layout pages.
  const bool layout_pages_;
  int64_t layout_pages_written_ = 0;
  // Pages of every (sequence, layer)'s block (AttendBlock): owned slots per KV head.
  int64_t block_pages_ = 0;
  // Host selection: one task per sequence of a layer's batch.
  worker_internal::TaskPool select_pool_;
  // Per layer: the batch whose queries were last copied back (ObserveQueries) and, per row,
  // whether that step retrieved (its query becomes the trigger's anchor).
  std::vector<std::vector<std::pair<SequenceId, bool>>> q_pending_;
  // Late reads (louiskv with trigger_late, retriever::Selector::CanStepLate): per layer, the rows
  // of the last step whose key (and, when a step ran without it, query) their selector still
  // waits for, copied back without a sync under the layer's tags; read at the layer's next step.
  struct LateRead {
    SequenceId id;
    int64_t row;
    bool query;
  };
  std::vector<std::vector<LateRead>> late_pending_;
  std::vector<char> late_;  // this layer's rows: read late
  int QueryTag(int layer) const { return o_.num_layers + layer; }
  int KeyTag(int layer) const { return 2 * o_.num_layers + layer; }
  // Hands the layer's late reads of the last step to their selectors; a failure (a non-finite
  // value, a copy error) fails that sequence.
  void SettleLateReads(int layer);
  // Starts the copies the layer's late rows need (after the layer's work on the stream).
  absl::Status StartLateReads(int layer, const TensorView& q, const TensorView& k);
  // Whether the row of `ls` reads its query and key late this step.
  bool ReadsLate(const worker_internal::LayerState& ls) const;
  std::vector<int32_t> free_sum_;
  std::vector<int32_t> slot_page_;

  // Scratch.
  // fn(h) for every KV head: on the select threads when the layer resolves at least
  // kParallelPages head-pages (a thread hand-off costs more than a few thousand lookups save),
  // else on the caller.
  static constexpr int64_t kParallelPages = 4096;
  void RunHeads(int64_t head_pages, const std::function<void(int64_t)>& fn) {
    if (head_pages >= kParallelPages) {
      select_pool_.Run(kv_, fn);
    } else {
      for (int64_t h = 0; h < kv_; ++h) fn(h);
    }
  }
  // One KV head's share of resolving a layer's pages to pool slots (louiskv's scored pages, then
  // the attended rows), done on its own select thread: what it found and what the batch's gather
  // must fill.
  struct HeadResolve {
    std::vector<std::vector<int32_t>> slots;  // [row]: the slot of each page resolved
    std::vector<char> failed;                 // [row]: the pool had no slot left
    std::vector<HeadFetch> fetches;
    std::vector<FetchOrigin> origins;
    int64_t hits = 0;
    void Reset(int64_t rows);
  };
  std::vector<HeadResolve> head_res_;
  // Head h of page p (not the open page) of `ls` for batch row `row`: the residency `seen` last
  // (may be null) when it still holds, else the pool's cached copy, else a new slot queued in w
  // for the gather; -1 when the pool has no slot left.
  int32_t ResolvePage(HeadResolve& w, int h, worker_internal::LayerState& ls, int32_t p,
                      int32_t row, const worker_internal::LayerState::Residency* seen);
  // Head h of each page of `pages` (page ids of `ls`; the open page is the row's own slot) for
  // batch row `row`, appended to `slots` in order, each residency remembered in ls.seen; false
  // when the pool has no slot left (`slots` then partial). Runs on head h's select thread.
  bool ResolveRow(HeadResolve& w, int h, worker_internal::LayerState& ls,
                  const std::vector<int32_t>& pages, int32_t row, std::vector<int32_t>& slots);
  // Joins the heads' hits and fetches, in head order.
  void JoinHeads(WorkerStepStats& stats, std::vector<HeadFetch>& fetches,
                 std::vector<FetchOrigin>& origins) const;
  // Slots of every row of `layer` (ls.rows; rows failed or steady_ skipped) into head_res_, and
  // what is not resident as fetches. InternalError when the pool ran out (Plan checked it).
  absl::Status ResolveLayer(int layer, const std::vector<absl::Status>& status,
                            WorkerStepStats& stats, std::vector<HeadFetch>& fetches,
                            std::vector<FetchOrigin>& origins);
  // Its parts: the head-pages the layer's rows list (their `seen` tables sized), one KV head's
  // slots into w (safe on distinct heads at once), and the join of head_res_ (InternalError
  // when a head ran out of slots).
  int64_t RowHeadPages(int layer, const std::vector<absl::Status>& status);
  void ResolveRows(int layer, int h, const std::vector<absl::Status>& status, HeadResolve& w);
  absl::Status JoinLayer(WorkerStepStats& stats, std::vector<HeadFetch>& fetches,
                         std::vector<FetchOrigin>& origins);
  std::vector<std::vector<HeadResolve>> staged_res_;  // [layer][head]: a staged step's slots
  std::vector<int32_t> indptr_, indices_, last_len_;
  // louiskv's closed-form rows of the layer step in progress (steady_[b]), their scored pages'
  // slots ([b * kv_heads + h]), the request AttendChosen sends, and per layer the sequences whose
  // choice is pending under the layer's tag.
  std::vector<char> steady_;
  std::vector<std::vector<int32_t>> steady_slots_;
  MassAttendRequest mass_req_;
  std::vector<std::vector<SequenceId>> steady_batch_;
  // (sequence, layer) states holding slots, and how many slots per head holds may take in the
  // step in progress (what Plan's worst case leaves).
  std::vector<std::pair<SequenceId, int>> held_states_;
  int64_t hold_room_ = 0;
  int64_t next_list_ = 0;  // ids of the backend's stored slot lists
  // Holds row b's resident candidates (closed-form step, slots resolved) when the room allows.
  void HoldCandidates(int64_t b, int layer, const retriever::ScoreRequest& req);
  void Unhold(worker_internal::LayerState& ls);
  // Releases holds (sequences outside `keep` first) until every head holds at most `room`.
  void ReleaseHolds(int64_t room, absl::Span<const SequenceId> keep);
  std::vector<uint8_t> page_scratch_;  // a page the store already holds (StagePages)
  struct PendingCommit {
    SequenceId id;
    int layer;
    int64_t page;
    int tag;
    PageKey key;
    WriteOptions options;
  };
  std::vector<PendingCommit> pending_commits_;  // this step's CommitTailLater
  std::vector<uint16_t> qh_, kh_, vh_;          // host copies of a layer's q, k, v
};

}  // namespace pagoda

#endif  // PAGODA_CLIENT_WORKER_DECODE_WORKER_IMPL_H_
