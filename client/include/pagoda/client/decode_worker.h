// The decode worker: Pagoda's decode path, shaped like an attention backend inside an inference
// engine's layer loop. One worker per GPU worker process; it serves every layer of a model for
// many sequences at once over pages held in a pagoda::Store.
//
//   auto w = *DecodeWorker::Create(store, MakeCpuWorkerBackend(), options);
//   auto seq = *w->Open(prompt_ids);                  // seq.cached_tokens come from the store
//   for layer: w->Prefill(seq.id, layer, k, v);       // K/V [T, kv_heads, d] of the rest
//              (or PrefillAttend(seq.id, layer, q, k, v, o): the same write and the chunk's
//              causal attention over the cached prefix and itself, o [T, q_heads, d])
//   loop:
//     auto plan = *w->Plan(ids, new_token_ids);       // once per step, for the batch
//     for layer: w->Attend(plan, layer, q, k, v, o);  // q [B, q_heads, d], k/v [B, kv_heads, d]
//     auto stats = *w->Finish(plan);                  // per-sequence status, phase times
//   (a step between retrievals may be captured in a CUDA graph and replayed: StepPlan::capturable)
//   a diffusion LM's block (DiffusionSession is this, for host spans):
//     w->AttendBlock(seq.id, layer, q, k, v, o);      // N queries: the context + the block
//     w->Extend(seq.id, block_ids);                   // then per layer:
//     w->CommitBlock(seq.id, layer);                  // the block joins the sequence
//     w->Truncate(seq.id, tokens);                    // e.g. a remasked block leaves it again
//
// Pages. Every full page of a sequence (all KV heads of one layer, page_tokens tokens) is a store
// page under its chained key (ChainPageKey over the token ids, model, layer, salt): equal
// prefixes are equal keys, so sequences sharing a prefix share its pages, and Open finds the
// longest prefix some worker (this process or another) already wrote. Full pages are committed to
// the store (two-phase) by a background committer; the open page of each (sequence, layer) lives
// only in the attention pool until it fills.
//
// The attention pool is the worker's GPU tier: head-granular slots (one KV head of one page,
// kv_heads sub-pools of pool_slots_per_head slots), shared by every sequence and every layer of the
// worker, reused across steps, evicted in CLOCK order. A head-page two sequences share is one slot.
// Prefill writes whole pages through a host staging straight to the store (one download per call);
// only the open page's rows enter the pool.
//
// A step, per layer and sequence: the new token's k/v join the open page (in the pool) and the
// selector; the selector picks pages per KV head. Quest selects on the backend: its page summaries
// live there and are folded as tokens are written, one kernel scores and ranks the batch, and
// nothing of q / k / v is read on the host (with the boundary trigger, q is read back a step late
// without a sync). The other policies select on the host, one task per sequence on select_threads
// threads (every retriever policy, louiskv included: at the end of each layer's prefill it
// clusters the prompt's keys per KV head and writes the cluster-ordered layout pages it selects
// from as store pages of their own — keyed by the positions they hold of the natural pages, so
// equal prompts share them; about one extra page per prompt page; its exact rescoring runs on
// the backend: the selectors stop at their score requests, the requested layout pages are
// gathered into the pool like attended ones and one ScorePages call scores the batch, then the
// selectors finish with the masses);
// missing head-pages are gathered straight from the store's host arena (a read lease per page)
// into pool slots by one verified gather; a head-page whose bytes do not match the checksum taken
// when the page was written is never attended: it is read again through the store (which verifies
// the page and may read it from SSD) and, if that fails too, the sequence's step fails with
// DataLoss while the rest of the batch proceeds. Then one sparse decode over the batch.
//
// Errors. Bad input (unknown sequence, wrong shapes / dtypes / devices / strides, a layer out of
// range, a plan that does not match the batch, a layer attended twice in a step) is
// InvalidArgument or FailedPrecondition and changes nothing. Plan refuses (ResourceExhausted) a
// batch whose worst-case need for one layer exceeds the pool, before anything changes. A
// sequence whose step failed (DataLoss, a store error) is marked failed: later plans refuse it;
// Close it.
//
// Thread safety: a worker is not synchronized (one engine thread drives it). Several workers may
// share one Store from different threads.
#ifndef PAGODA_CLIENT_DECODE_WORKER_H_
#define PAGODA_CLIENT_DECODE_WORKER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "pagoda/client/tensor.h"
#include "pagoda/client/worker_backend.h"
#include "pagoda/kvstore/options.h"
#include "pagoda/kvstore/page.h"
#include "pagoda/kvstore/store.h"
#include "pagoda/retriever/selector.h"
#include "pagoda/retriever/streaming_profile.h"

namespace pagoda {

using SequenceId = uint64_t;

struct DecodeWorkerOptions {
  std::string tenant = "decode";
  // What page keys commit to besides the tokens: model id, layer (per page) and the tenant's salt.
  std::string model_id = "model";
  std::string salt;
  // Page shape of every layer; the store must accept it. q_heads a multiple of layout.kv_heads.
  PageLayout layout{DType::kBf16, 8, 128, 16};
  int q_heads = 32;
  int num_layers = 1;
  // Layer index page keys commit to for worker layer 0 (a worker serving a slice of a model's
  // layers, e.g. one pipeline stage): worker layer l is model layer first_layer + l.
  uint32_t first_layer = 0;

  // Retriever policy and its knobs (shape fields are taken from layout / q_heads). A budget that
  // covers the whole context attends it densely. Quest (the default) selects on the backend;
  // every other policy on the host — louiskv recalls more (bench/RESULTS.md); its exact
  // rescoring runs on the backend. By default (rescore_factor = resident_factor) it rescores
  // every resident page, so every step is in closed form (retriever::SteadyRow): the host
  // resolves its kept pages (sinks, window) and the trigger, and one backend call scores the
  // resident candidates, chooses the budget's best and attends them (WorkerBackend::
  // AttendBestByMass: no host sync on CUDA); the resident candidates stay held in the pool and
  // stored on the backend until the next retrieval. A retrieval ranks the clusters on the host
  // (with the step's own query) to pick the new resident set, gathers what of it is missing, and
  // chooses the same way. With selector.trigger_late (the worker's default) the trigger decides
  // a step from the query of the step before, so the host knows ahead which steps retrieve: the
  // others read their q and k back a step late without a sync (WorkerStepStats::late_reads; on a
  // device backend their values are then checked a step late too: a non-finite one fails the
  // sequence at its next step); on the traces that costs 0.003 of group recall
  // (bench/RESULTS.md). selector.retrieve_late (off by default) moves each retrieval after the
  // first a step later too, so every step after a sequence's first reads late and no layer syncs
  // at any batch size, for 0.015 of group recall on the traces. Pool sizing for
  // louiskv: Plan reserves retriever::MaxScoredPages per (sequence, layer) of a step (about
  // resident_factor x the budget by default), and each (sequence, layer) holds about
  // resident_factor x the budget between steps when the pool has room beyond that (Plan releases
  // holds it needs; a released set is resolved again at its next step, WorkerStats::
  // held_head_pages says how much is held).
  retriever::Policy policy = retriever::Policy::kQuest;
  // The retriever's defaults, but louiskv's trigger a step late (selector.trigger_late; see
  // above): on an H100 at 128K it took a louiskv layer-step from 0.82x to 0.64x torch SDPA at
  // B=1 and 0.44x to 0.39x at B=8, for 0.003 of group recall (bench/RESULTS.md, run 18).
  retriever::SelectorOptions selector = [] {
    retriever::SelectorOptions s;
    s.trigger_late = true;
    return s;
  }();
  // LouisKV's boundary trigger for the page policies (quest, hierarchical, ann, oracle): re-select
  // only when the query drifts, reusing the last selection (plus the moving window) otherwise.
  // The louiskv policy has its own trigger (selector.boundary_threshold). With quest (selected on
  // the backend) the trigger sees each query a step late, read back without a stream sync: a
  // drift seen in step t's query makes step t + 1 retrieve (with its own query).
  bool boundary_trigger = false;
  float boundary_threshold = 0.9f;
  // Per-layer thresholds (layers differ in how fast their queries drift; calibrate each with
  // retriever::CalibrateBoundaryThreshold). Empty: boundary_threshold for the page policies'
  // trigger and selector.boundary_threshold for louiskv, in every layer. Else one per layer, used
  // by both.
  std::vector<float> layer_thresholds;
  // Streaming heads per layer (LServe / DuoAttention): the KV heads of layer l listed in
  // layer_streaming_heads[l] attend only the sink and window pages, are never selected for and
  // never fetch anything else, so their other pages age out of the pool. Empty: none; else one
  // list per layer (e.g. from a streaming-head profile of the model).
  std::vector<std::vector<int>> layer_streaming_heads;
  // What a streaming head attends: its first streaming_sink_pages pages and its last
  // streaming_window_pages pages (the open page included). A profile's sink / window tokens,
  // rounded up to pages.
  int streaming_sink_pages = 1;
  int streaming_window_pages = 4;

  // Pin the prompt's full pages in the store while the sequence is open (a shared system prompt:
  // never evicted, counts against the tenant's pin quota) and attend them every step.
  bool pin_prompt = false;
  // Rolling-window streams (streaming generation): the pages of each (sequence, layer) go to a
  // store stream with these options (id stream_base + sequence id * num_layers + layer), so pages
  // that leave the window leave the store. Needs policy streaming with selector.sink_pages ==
  // stream->sink_pages and selector.window_pages <= stream->window_pages, and no trigger.
  std::optional<StreamOptions> stream;
  uint64_t stream_base = uint64_t{1} << 32;
  // Promote each retrieval's prefetch hints (the next-best pages) from SSD to the host tier off
  // the step (on the committer thread), so a later retrieval finds them in the arena.
  bool prefetch = true;

  // Slots of each KV head's sub-pool (the GPU budget is kv_heads x this x head-page bytes). Must
  // hold one step of the largest batch: Plan checks it.
  int32_t pool_slots_per_head = 4096;
  // Prefill also copies whole pages into the pool's free slots (never evicting what is cached),
  // straight from the caller's K/V: a decode step that selects them finds them resident instead
  // of gathering them back from the host tier. For a worker that prefills the sequences it
  // decodes with a pool larger than one step's need; off, only decode reads fill the pool.
  bool prefill_to_pool = false;
  // For an engine that runs its decode layer loop as a CUDA graph: a step in which nothing
  // retrieves is planned whole so that it can be captured and replayed (StepPlan::capturable).
  // Off, each layer's host work runs in its Attend, overlapping the device's work on the layers
  // before it; planned whole, Plan does all of it before any layer's device work starts: on an
  // H100, quest at 32K x B=4 with 16 layers and no graph took 0.159 ms per layer-step against
  // 0.117 (bench/RESULTS.md "Capturable steps"), a cost a graph must win back in the engine's own
  // per-layer launches. Triggers fire nearly independently per (sequence, layer), so a step of
  // many layers is rarely free of retrievals unless the budget covers the context or the trigger
  // rarely fires; policy quest only (CanStage).
  bool capturable_steps = false;
  // Policy quest selects on the backend (the CUDA backend scores on the device against summaries
  // it keeps there; the CPU backend runs the kernels' reference): a summary table of this many
  // slots, one per page of every (sequence, layer) open in the worker (4 KiB each at Llama-3-8B
  // shapes). Prefill and Plan answer ResourceExhausted when it is full.
  int64_t summary_slots = 65536;
  // Threads that run host selection (every policy but quest) for a layer's batch, one sequence per
  // task, the engine's thread among them: selection per sequence is independent. They also
  // resolve a large layer's pool slots (>= 4096 head-pages), one KV head per task. 0 = the
  // machine's cores, at most 8; 1 = the engine's thread only.
  int select_threads = 0;
  // Verify every gathered head-page against its checksum (off only to measure what it costs).
  bool verify = true;
  // Lease asked per fetched page (the gather copies well within it; expiry is caught by the
  // checksum and answered by a verified re-read).
  double lease_seconds = 1.0;
  // Host-tier bytes Create prepares for this worker's tenant and layout (Store::PrepareHostTier):
  // a segment's first use maps (and, on CUDA, page-locks) its memory, most of a prefill's host
  // time on a cold store; prepared at Create, the prefills skip it. -1: every free segment; 0:
  // none (segments are prepared on demand). Prepared segments that stay empty still go to other
  // tenants when the tier runs out.
  int64_t prepare_host_bytes = 0;
};

struct OpenedSequence {
  SequenceId id = 0;
  // Leading prompt tokens whose pages were found in the store for every layer (a multiple of
  // page_tokens, at most prompt length - 1: the last token is always prefilled by the caller).
  int64_t cached_tokens = 0;
};

// A step's batch, from Plan.
struct StepPlan {
  uint64_t id = 0;
  std::vector<SequenceId> sequences;
  // The step was planned whole (a staged step): no (sequence, layer) of it retrieves, and Plan
  // already did every layer's host work (appends, rows, pool slots, fetches, page tables). Each
  // Attend then only enqueues the layer's work on the backend's stream, reading buffers the
  // backend keeps (WorkerBackend::AttendStaged): no host sync, no host work. So the engine may
  // capture its layer loop in a CUDA graph while calling Attend (capturing runs nothing: launch
  // the graph after) and, at a later capturable step with the same graph_key, replay that graph
  // instead of calling Attend, then call Replayed. The graph bakes in the tensors' addresses
  // (q / k / v / o of every layer must be the same buffers, contiguous) and the batch size; a new
  // graph_key means buffers moved or the batch changed: capture again. Only with
  // DecodeWorkerOptions::capturable_steps; quest only (its selection runs on the backend), with the
  // boundary trigger (otherwise every step retrieves) or a budget covering the context, and a pool
  // that holds every layer's pages of the step at once.
  bool capturable = false;
  uint64_t graph_key = 0;
};

// What one step did, all layers. Bytes are head-page bytes.
struct WorkerStepStats {
  // Per sequence of the plan: OK, or why its step failed (DataLoss when no verified copy of a
  // page it needed could be had; its outputs were zeroed, never computed from wrong bytes).
  std::vector<absl::Status> sequence_status;
  int64_t retrievals = 0;  // (sequence, layer) selections that ran afresh
  // (sequence, layer) steps chosen on the backend in closed form (louiskv rescoring every resident
  // page, retrievals included: scored, chosen and attended with no host sync,
  // WorkerBackend::AttendBestByMass). A retrieval in closed form counts in retrievals too.
  // (sequence, layer) steps whose q and k the host read back a step late (louiskv with
  // selector.trigger_late, a step the trigger does not retrieve at; with selector.retrieve_late
  // every step after the first, late retrievals included): a layer whose rows all read late has
  // no host sync for them.
  int64_t late_reads = 0;
  int64_t chosen_on_backend = 0;
  int64_t attended_head_pages = 0;  // table entries, all rows
  int64_t fetched_head_pages = 0;   // gathered into the pool this step
  // Of those, read where the worker last saw their page in the host arena, without a lease
  // (Store::HoldHostArena; verification catches a page that moved).
  int64_t unleased_head_pages = 0;
  int64_t pool_hits = 0;          // head-pages already resident (shared ones included)
  int64_t shared_head_pages = 0;  // slots read by more than one sequence in the same layer
  int64_t verify_failures = 0;    // leased head-pages gathered whose checksum did not match
  // Unleased head-pages whose checksum did not match: their page had moved (evicted, demoted, its
  // slot reused) since the worker saw it there. Re-read like verify failures.
  int64_t stale_hints = 0;
  int64_t fallback_reads = 0;  // pages re-read through the store after a failure
  uint64_t bytes_fetched = 0;
  // Bytes read per tier the page was in: a gathered head-page's bytes, and the whole page for a
  // re-read through the store (which reads every head).
  uint64_t bytes_from_tier[kNumTiers] = {0, 0, 0};
  uint64_t bytes_committed = 0;  // full pages committed (all heads)
  double append_s = 0, select_s = 0, fetch_s = 0, verify_s = 0, attend_s = 0, commit_s = 0;
  // fetch_s in parts: resolving pool slots (host), the store's leases taken and released and its
  // arena held (host), and the gather (enqueued, then waited for: its verdicts are read before
  // anything is attended).
  double resolve_s = 0, lease_s = 0, gather_s = 0;
};

struct WorkerStats {
  int64_t sequences = 0;
  int32_t pool_slots_per_head = 0;
  int64_t pool_used = 0;  // head-pages resident (all heads), open pages included
  int64_t pool_evictions = 0;
  int64_t pages_committed = 0;
  int64_t pages_reused = 0;  // commits that found the page already stored (a shared prefix)
  // louiskv: cluster-ordered layout pages written (store pages besides the natural ones; counted
  // in pages_committed / pages_reused too).
  int64_t layout_pages = 0;
  // What the worker keeps resident, in bytes: pool slots in use (GPU tier: head-pages, open pages
  // included), the device summary table's used slots (quest), and the host selectors' memory
  // (their copies of the keys, summaries, louiskv's clusters and segment sums; every policy but
  // quest).
  int64_t pool_bytes = 0;
  // louiskv: pool slots its resident sets hold between retrievals (never evicted while held;
  // counted in pool_used). Plan releases holds the next step's worst case needs.
  int64_t held_head_pages = 0;
  int64_t summary_table_bytes = 0;
  int64_t selector_host_bytes = 0;
};

// The streaming heads of model layers [first_layer, first_layer + num_layers) of a streaming-head
// profile (retriever/streaming_profile.h), in the shape of layer_streaming_heads. Layers the
// profile does not cover have none. (The worker's streaming heads keep
// streaming_sink_pages and streaming_window_pages; set them to cover the profile's sink_tokens /
// window_tokens.)
std::vector<std::vector<int>> StreamingHeadsFromProfile(const retriever::StreamingProfile& profile,
                                                        uint32_t first_layer, int num_layers);

class DecodeWorker {
 public:
  // Validates options (InvalidArgument naming the field), creates the pool on the backend and
  // registers the store's host arena with it. `store` must outlive the worker.
  static absl::StatusOr<std::unique_ptr<DecodeWorker>> Create(
      Store* store, std::unique_ptr<WorkerBackend> backend, const DecodeWorkerOptions& options);
  ~DecodeWorker();

  // Opens a sequence for a prompt (>= 1 token ids). The longest prefix stored for every layer is
  // found (one LongestCachedPrefix per layer) and loaded: its pages are read once, verified, and
  // their keys summarized for the selector. The caller then prefills tokens [cached_tokens, n).
  absl::StatusOr<OpenedSequence> Open(absl::Span<const int32_t> token_ids);

  // Layer-wise prefill write: k, v [T, kv_heads, head_dim] (layout dtype, the backend's device) of
  // the next T prompt tokens of `layer` (chunked prefill: call again with the next chunk). Full
  // pages are committed asynchronously, so another worker can read layer l while l+1 is written.
  // InvalidArgument for shapes, non-finite host values, a layer out of range, more tokens than
  // the prompt has left; nothing is written then.
  absl::Status Prefill(SequenceId id, int layer, const TensorView& k, const TensorView& v);

  // Prefill with attention: writes k, v as Prefill does, then sets o [T, q_heads, head_dim] to the
  // causal attention of q [T, q_heads, head_dim] (the chunk's queries, at positions
  // Length(id, layer) ..  + T - 1) over every earlier token of the sequence in this layer — the
  // prefix Open found in the store, earlier chunks, and the chunk itself — so a prefix hit saves
  // the cached tokens' prefill compute, not only their writes. Streaming heads of the layer
  // (layer_streaming_heads) attend the first streaming_sink_pages * page_tokens positions and the
  // last streaming_window_pages * page_tokens positions up to their own (LServe's Lambda mask,
  // token-granular here), never fetching the pages in between; other heads attend everything.
  // The attended head-pages are pool slots for the call: pages already in the pool are used in
  // place, the chunk's pages enter the pool from k / v (so decode finds them), earlier pages are
  // gathered from the store's host tier and verified like a decode step's (a page that cannot be
  // verified fails the sequence with DataLoss, and o is then not written). One kernel call:
  // block-sparse prefill (CUDA) or its reference (CPU).
  // Errors as Prefill's, plus InvalidArgument for q / o shapes, dtypes, devices or non-finite host
  // q, and ResourceExhausted when a dense head's pages outnumber the pool's slots for that head
  // (pool_slots_per_head; or make it a streaming head): all checked before anything is written.
  absl::Status PrefillAttend(SequenceId id, int layer, const TensorView& q, const TensorView& k,
                             const TensorView& v, const TensorView& o);

  // A new sequence sharing everything `parent` holds (its full pages are the same store pages and
  // pool slots; its open pages are copied). The parent must be fully prefilled and not failed.
  absl::StatusOr<SequenceId> Fork(SequenceId parent);

  // Closes a sequence: frees its open pages' slots; its committed pages stay in the store (and in
  // the pool until evicted). NotFound for an unknown id; FailedPrecondition inside a step.
  absl::Status Close(SequenceId id);

  // Plans one decode step for `sequences` (distinct, open, fully prefilled, not failed), whose
  // newest tokens are `token_ids` (one each, at position = current length). One plan at a time.
  absl::StatusOr<StepPlan> Plan(absl::Span<const SequenceId> sequences,
                                absl::Span<const int32_t> token_ids);

  // One layer of the planned step: q [B, q_heads, d], k and v [B, kv_heads, d] of the new tokens,
  // o [B, q_heads, d] (written). B is the plan's batch, in its order. Each layer once per step.
  absl::Status Attend(const StepPlan& plan, int layer, const TensorView& q, const TensorView& k,
                      const TensorView& v, const TensorView& o);

  // A capturable step (StepPlan::capturable) whose layers ran by a replay of a graph captured
  // from the Attend calls of an earlier capturable step with the same graph_key: every layer
  // counts as attended. FailedPrecondition for a step that is not capturable or whose layers
  // were attended; InvalidArgument for another plan.
  absl::Status Replayed(const StepPlan& plan);

  // Ends the step: every layer must have been attended. Waits for the step's commits.
  absl::StatusOr<WorkerStepStats> Finish(const StepPlan& plan);

  // Waits until every page committed so far is in the store (or reports the first commit error).
  absl::Status Flush();

  // ---- Editing a sequence, and blocks (a diffusion LM's decoding; DiffusionSession) -----------
  // Served for every policy but louiskv (Unimplemented: its cluster layout is built from the whole
  // prompt once), on sequences that are fully prefilled, not failed, not on a rolling-window
  // stream, outside a step; each refusal changes nothing.
  //
  // Appends tokens to the sequence: its every layer then takes their K/V through Prefill /
  // PrefillAttend or CommitBlock, like a prompt's (the sequence cannot be planned until all layers
  // have). A finalized diffusion block, or text spliced into the context. FailedPrecondition when
  // a layer's length is not a multiple of page_tokens (an open page: decode tokens past a page
  // boundary); InvalidArgument for no tokens.
  absl::Status Extend(SequenceId id, absl::Span<const int32_t> token_ids);

  // Cuts the sequence back to its first `tokens` tokens (a remasked diffusion block, rejected
  // draft tokens): later pages leave the sequence and the attention pool (they stay in the store
  // under their chained keys, valid for the tokens they hold, until evicted or removed), and each
  // layer's selection state is rebuilt from the pages kept, read back from the store (verified):
  // a cost linear in the sequence. tokens a multiple of page_tokens, page_tokens <= tokens <= the
  // length of every layer (InvalidArgument otherwise). A page that cannot be read back fails the
  // sequence.
  absl::Status Truncate(SequenceId id, int64_t tokens);

  // A bidirectional block after the end of the sequence's `layer` (a diffusion LM's noisy block,
  // denoised over several steps): q [N, q_heads, d] its queries, k / v [N, kv_heads, d] its
  // current K/V; o [N, q_heads, d] (written) is each query's attention over the context pages
  // the selector picks for the block (one selection per call for the block's mean query, shared
  // by its queries; every page when the budget covers the context; streaming heads their sinks
  // and window) and over the whole block, with no causal mask. The block is not part of the
  // sequence: its K/V sit in pool slots the (sequence, layer) owns until CommitBlock, Extend's
  // prefill, Truncate or Close, and a later call reuses them. keep_pages (empty, or one flag per
  // block page, ceil(N / page_tokens)): 1 = that page's K/V are the last call's (not rewritten;
  // the caller knows which tokens it changed). Context pages are resolved like a decode step's
  // (pool, else a verified gather from the store's host tier, else a verified store read).
  // The layer must end on a page boundary (FailedPrecondition). InvalidArgument (nothing changed)
  // for shapes / dtypes / devices, non-finite host inputs, a layer out of range, keep_pages of
  // the wrong size or keeping pages no earlier call of this N wrote; ResourceExhausted (nothing
  // changed) when the context pages a head reads and the block's pages exceed its sub-pool. Quest
  // selects from the block's mean query on the backend: on a device backend that is Unimplemented
  // for now (budgets that cover the context, and every other policy, run on both). A page with no
  // verified copy fails the sequence with DataLoss (o is then not written). Stats: the block's
  // head-pages, each counted once however many queries read it.
  absl::StatusOr<WorkerStepStats> AttendBlock(SequenceId id, int layer, const TensorView& q,
                                              const TensorView& k, const TensorView& v,
                                              const TensorView& o,
                                              absl::Span<const uint8_t> keep_pages = {});

  // The layer's block (its K/V as the last AttendBlock wrote them) becomes the layer's next
  // tokens, the ones Extend added (exactly as many: FailedPrecondition otherwise, or when the
  // layer has no block): full pages are committed to the store (checksummed, asynchronously; Flush
  // waits) and their pool slots become the pages' cached copies, so the next block's steps find
  // them resident; a partial last page becomes the layer's open page.
  absl::Status CommitBlock(SequenceId id, int layer);

  // Tokens of a sequence (prompt + generated) as seen by `layer`.
  absl::StatusOr<int64_t> Length(SequenceId id, int layer = 0) const;
  // Keys of the full pages of (sequence, layer), in order.
  absl::StatusOr<std::vector<PageKey>> PageKeys(SequenceId id, int layer) const;
  // The pages each KV head of (sequence, layer) attended in the last step (ascending): natural
  // page ids, except that with policy louiskv the ids between its sink pages and the prompt's
  // tail are pages of its cluster-ordered layout (AttendedPositions maps them to positions).
  absl::StatusOr<std::vector<std::vector<int32_t>>> LastRows(SequenceId id, int layer) const;
  // louiskv: keys of the cluster-ordered layout pages of (sequence, layer) (empty for the other
  // policies, and for prompts too short to cluster).
  absl::StatusOr<std::vector<PageKey>> LayoutPageKeys(SequenceId id, int layer) const;
  // The token positions each KV head of (sequence, layer) attended in the last step (or
  // AttendBlock: the block's positions follow the layer's tokens), ascending.
  absl::StatusOr<std::vector<std::vector<int64_t>>> AttendedPositions(SequenceId id,
                                                                      int layer) const;
  WorkerStats Stats() const;
  const DecodeWorkerOptions& options() const;

  class Impl;

 private:
  explicit DecodeWorker(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace pagoda

#endif  // PAGODA_CLIENT_DECODE_WORKER_H_
