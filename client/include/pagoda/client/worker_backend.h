// The compute side of the decode worker (decode_worker.h): the attention pool and the kernels
// that fill it and read it. The worker decides which head-page sits in which slot; a backend only
// moves bytes and runs attention, on its device.
//
// The pool is head-granular: num_kv_heads sub-pools of `slots` slots each; slot s of head h holds
// the K [page_tokens, head_dim] and then the V of one KV head of one page (kernels::
// HeadGatherParams gives the addressing). A page two sequences share is one slot per head.
//
// Backends: the CPU one (host pool, the kernels' C++ references: what CI runs) and, where Pagoda
// is built with CUDA, the CUDA one (device pool, the kernels' CUDA twins on one stream).
// Both validate inputs the same way, so a caller sees the same errors from either.
//
// Thread safety: a backend is not synchronized; one per worker.
#ifndef PAGODA_CLIENT_WORKER_BACKEND_H_
#define PAGODA_CLIENT_WORKER_BACKEND_H_

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "pagoda/client/tensor.h"
#include "pagoda/kernels/params.h"
#include "pagoda/kvstore/page.h"

namespace pagoda {

// One head-page address in the pool.
struct HeadSlot {
  int32_t head = 0;
  int32_t slot = 0;
  friend bool operator==(const HeadSlot&, const HeadSlot&) = default;
};

// One batched Quest selection (kernels::QuestParams semantics) over the backend's summary table:
// page ids are summary slots. Host arrays; row b of the CSRs belongs to q's row b (a row with no
// candidates and nothing kept selects nothing).
struct QuestRequest {
  int32_t top_k = 0;
  kernels::GroupReduce reduce = kernels::GroupReduce::kSum;  // the GQA group's score
  std::vector<int32_t> cand_indptr;                          // [batch + 1]
  std::vector<int32_t> cand;         // summary slots, per row the candidates in page order
  std::vector<int32_t> keep_indptr;  // [batch + 1]
  std::vector<int32_t> keep;         // summary slots always kept (sinks, window)
  std::vector<int32_t> last_len;     // [batch] tokens of the row's last kept page
};

// One head-page to fetch from the registered source (the store's host arena): K and V at these
// byte offsets, expected head checksum (kernels/head_checksum.h).
struct HeadFetch {
  HeadSlot dst;
  int64_t src_k = 0;
  int64_t src_v = 0;
  uint64_t checksum = 0;
};

// One batched step that chooses from exact masses and attends the choice (louiskv between
// retrievals; kernels::MassSelectParams over ScorePages' masses). Host arrays; row
// r = b * kv_heads + h (q's row b, KV head h) lists entries [indptr[r], indptr[r + 1]) of head
// h's sub-pool: slot slots[e] holding page_len[e] tokens, keep[r] kept entries first, then the
// row's candidates. The row attends kept entries [0, split[r]), the min(need[r], candidates)
// candidates of greatest mass in candidate order (ties: the earlier), then kept entries
// [split[r], keep[r]); out_indptr gives those sizes' prefix sums and last_page_len[r] the tokens
// of the row's last attended entry (the others are full).
//
// Candidates a row keeps from step to step (louiskv's resident set) need not be sent each time:
// save[r] >= 0 stores the row's listed candidates (its entries past keep[r]) on the backend as
// slot list save[r]; list[r] >= 0 appends list_count[r] entries of stored list list[r], from
// list_off[r], to the row's listed ones (full pages, candidates after the listed candidates).
// A list lives until DropSlotList; saving under a live id replaces it.
//
// host_copies: tensors ([a, b, c], the backend's device and dtype) to copy for the host along with
// the step, each under its own copy tag (as StartCopyToHost; read with FinishCopyToHost); not o or
// anything else the step writes (when a copy is taken is the backend's choice). The CUDA backend
// makes them inside the mass kernel when they are contiguous and 16-byte aligned (no operation
// of their own on the stream), else as copies after the step.
struct MassAttendRequest {
  kernels::GroupReduce reduce = kernels::GroupReduce::kSum;
  std::vector<int32_t> indptr, slots, page_len;    // [rows + 1], [listed entries] x 2
  std::vector<int32_t> keep, split, need;          // [rows]
  std::vector<int32_t> out_indptr, last_page_len;  // [rows + 1], [rows]
  std::vector<int64_t> save, list;                 // [rows] each, -1: none
  std::vector<int32_t> list_off, list_count;       // [rows] each
  std::vector<std::pair<TensorView, int>> host_copies;
};

// One layer of a staged step (DecodeWorker's capturable steps): everything the layer's work needs
// besides its tensors, known before the layer loop. StageLayers uploads a step's layers into
// buffers the backend owns; AttendStaged then enqueues the layer's work reading only those, so a
// CUDA graph captured from AttendStaged calls replays correctly after a later StageLayers of the
// same staging generation. Host arrays; batch B = token_pos.size():
//  - the new tokens (as WriteTokens): row b of k / v goes to slot token_slots[b * kv_heads + h] of
//    head h, position token_pos[b];
//  - summaries (as UpdateSummaries, over those slots; empty: none): update b folds positions
//    [fold_from[b], fold_to[b]) into summary slot sum_slots[b];
//  - attention (as Attend): the table's B * kv_heads rows (indptr, indices, last_page_len);
//  - q_tag >= 0: q is copied for the host under that copy tag after the attention (as
//    StartCopyToHost; FinishCopyToHost(q_tag) reads it once the stream got there — after a graph
//    replay, the caller syncs first).
struct StagedLayer {
  std::vector<int32_t> token_slots, token_pos;
  std::vector<int32_t> sum_slots, fold_from, fold_to;
  std::vector<int32_t> indptr, indices, last_page_len;
  int q_tag = -1;
};

// Which KV heads of a prefill chunk are streaming heads (LServe's Lambda mask) and their shape.
struct PrefillMask {
  absl::Span<const uint8_t> streaming;  // [kv_heads]; empty: every head dense
  int32_t sink_tokens = 0;
  int32_t window_tokens = 0;
};

class WorkerBackend {
 public:
  virtual ~WorkerBackend() = default;

  // Allocates the pool: layout.kv_heads sub-pools of `slots` slots. Once, first. InvalidArgument
  // for slots < 1, an invalid layout, q_heads not a multiple of kv_heads or a shape the backend's
  // kernels do not support; ResourceExhausted when the memory cannot be had.
  virtual absl::Status Init(const PageLayout& layout, int q_heads, int32_t slots) = 0;
  virtual Device device() const = 0;
  // The CUDA device ordinal of a CUDA backend; -1 for a host backend.
  virtual int device_index() const { return -1; }
  virtual const char* name() const = 0;

  // Registers the host memory fetches read from (the store's host arena). The CUDA backend reads
  // it from the device through its host addresses, so every range a fetch names must already be
  // page-locked and mapped for device_index() at its own address (Store::MapHostTierForGpu, which
  // DecodeWorker calls). AssemblePages writes prefill pages into slots of the same range that the
  // caller reserved in the store (the range stays the store's; the backend only writes where it
  // is told). Replaces an earlier registration.
  virtual absl::Status RegisterSource(const uint8_t* base, int64_t bytes) = 0;

  // Verified gather from the registered source into the pool (one kernel): bad[i] = 1 when the
  // bytes that landed in fetches[i].dst do not match its checksum (the slot must then not be
  // attended). Destinations must not repeat. Completes before returning on the CPU backend;
  // ordered on the stream on CUDA (the flags are valid after Sync()).
  virtual absl::Status Gather(absl::Span<const HeadFetch> fetches, absl::Span<uint8_t> bad) = 0;

  // Writes token rows: row n of k and v ([n, kv_heads, head_dim], the backend's device, layout
  // dtype) goes to position positions[n] of slot slots[n * kv_heads + h] of head h.
  virtual absl::Status WriteTokens(const TensorView& k, const TensorView& v,
                                   absl::Span<const int32_t> slots,
                                   absl::Span<const int32_t> positions) = 0;

  // Prefill rows into store pages (kernels::PageAssemblyParams): k, v [pages * page_tokens,
  // kv_heads, head_dim] (the backend's device, unit last stride); page i is written in the store's
  // page layout at byte dst_offsets[i] of the registered source (the store's host arena, whose
  // reserved slots the caller owns) unless dst_offsets[i] < 0, and head_sums[i * kv_heads + h]
  // gets its head checksums. Synchronous: pages and sums are there when it returns. The CUDA
  // backend writes straight from device memory into the mapped arena (no host copy; k and v
  // 16-byte aligned with strides in multiples of 8 elements).
  virtual absl::Status AssemblePages(const TensorView& k, const TensorView& v,
                                     absl::Span<const int64_t> dst_offsets,
                                     absl::Span<uint64_t> head_sums) = 0;

  // Host <-> pool copies of whole head-pages (2 * page_tokens * head_dim elements each, K then V),
  // for fallback reads, commits and forks. Synchronous.
  virtual absl::Status WriteHeads(absl::Span<const HeadSlot> dst,
                                  absl::Span<const uint8_t> bytes) = 0;
  virtual absl::Status ReadHeads(absl::Span<const HeadSlot> src, absl::Span<uint8_t> bytes) = 0;
  virtual absl::Status CopyHeads(absl::Span<const HeadSlot> src,
                                 absl::Span<const HeadSlot> dst) = 0;

  // Sparse decode: q [batch, q_heads, head_dim] -> o (same shape), over the head-granular pool:
  // table row b * kv_heads + h lists slots of head h's sub-pool (host arrays).
  virtual absl::Status Attend(const TensorView& q, const kernels::PageTable& table,
                              const TensorView& o) = 0;
  // Block-sparse causal prefill attention of one sequence's chunk (kernels::PrefillParams over
  // the pool, per_kv_head): q / o [T, q_heads, head_dim]; the table has kv_heads rows, row h the
  // head-h slots of ALL the sequence's tokens so far (the context, then the T chunk tokens, already
  // written), every row the same token count >= T. Query i (position context + i) of a streaming
  // head (mask.streaming[h] != 0) attends the first sink_tokens and the last window_tokens
  // positions up to its own, other heads every position up to its own. Slots of pages a head's
  // mask never reads may be any valid slot.
  virtual absl::Status AttendPrefill(const TensorView& q, const kernels::PageTable& table,
                                     const PrefillMask& mask, const TensorView& o) = 0;

  // Exact page masses over the pool (kernels::PageMassParams; louiskv's rescoring): q [batch,
  // q_heads, head_dim] (the layer's query, as Attend reads it); row b * kv_heads + h of the CSR
  // (indptr, host) lists entries of head h's sub-pool: slot slots[i] holding page_len[i] tokens.
  // The group's query heads combine as `reduce` says. mass[i] (host) gets entry i's mass. Waits
  // for the result (one host sync on CUDA).
  virtual absl::Status ScorePages(const TensorView& q, absl::Span<const int32_t> indptr,
                                  absl::Span<const int32_t> slots,
                                  absl::Span<const int32_t> page_len, kernels::GroupReduce reduce,
                                  absl::Span<float> mass) = 0;

  // Scores, chooses and attends one MassAttendRequest: q [batch, q_heads, head_dim] -> o, with
  // no host sync on CUDA (the masses and the choice stay on the device). The chosen entries (for
  // each attended entry in order, its index in its row) are kept under copy tag `tag` (shared
  // with StartCopyToHost) for FinishChoices. InvalidArgument / OutOfRange (nothing enqueued) for
  // shapes, CSRs, slots, counts or sizes that do not agree.
  virtual absl::Status AttendBestByMass(const TensorView& q, const MassAttendRequest& req, int tag,
                                        const TensorView& o) = 0;
  // Forgets stored slot list `id` (MassAttendRequest::save); unknown ids are ignored.
  virtual void DropSlotList(int64_t id) = 0;
  // The chosen entries of the last AttendBestByMass under `tag` ([out_indptr[rows]]), waiting
  // for them; valid until the tag's next use. FailedPrecondition when none was made under it.
  virtual absl::StatusOr<absl::Span<const int32_t>> FinishChoices(int tag) = 0;

  // A contiguous host copy of `t` (a [a, b, c] tensor of the backend's device and 16-bit dtype),
  // for what the worker reads on the host (selection, input checks). Synchronous.
  virtual absl::Status CopyToHost(const TensorView& t, absl::Span<uint16_t> out) = 0;

  // The same copy without waiting: starts a host copy of `t` into the backend's own buffer `tag`
  // (0 <= tag < 65536, one per purpose, e.g. per layer) and returns; on CUDA it is ordered on the
  // stream into pinned memory, no sync. A later start under the same tag replaces it (waiting for
  // the earlier one first).
  virtual absl::Status StartCopyToHost(const TensorView& t, int tag) = 0;
  // The same for head-pages (as ReadHeads): their bytes, K then V of each in order, come back
  // through FinishCopyToHost(tag) as 16-bit elements. Tags are shared with StartCopyToHost.
  virtual absl::Status StartReadHeads(absl::Span<const HeadSlot> src, int tag) = 0;
  // The copy last started under `tag` (the tensor's elements, contiguous), waiting for it if it is
  // still in flight. Valid until the next StartCopyToHost of `tag`. FailedPrecondition when no
  // copy was started under it.
  virtual absl::StatusOr<absl::Span<const uint16_t>> FinishCopyToHost(int tag) = 0;

  // Page selection where the backend computes (Quest). A summary table of `slots` slots, each
  // the min and max key ([kv_heads, head_dim] each, layout dtype) of one page and its token count.
  // Once, after Init; InvalidArgument for slots < 1; ResourceExhausted without the memory.
  virtual absl::Status InitSummaries(int64_t slots) = 0;
  // Writes n summaries: slot slots[i] gets min / max rows i ([n, kv_heads, head_dim] each) and
  // count[i]. InvalidArgument for a slot out of range or sizes that disagree.
  virtual absl::Status WriteSummaries(absl::Span<const int32_t> slots,
                                      absl::Span<const uint16_t> min,
                                      absl::Span<const uint16_t> max,
                                      absl::Span<const int32_t> count) = 0;
  // Folds tokens already written to the pool (WriteTokens) into the summary table: update i is the
  // page held by pool slots pool_slots[i * kv_heads + h] (one per KV head) whose summary is slot
  // sum_slots[i]; its tokens [old_count[i], new_count[i]) join the min / max (old_count 0 starts
  // the summary afresh, whatever the slot held) and its count becomes new_count[i]. One kernel,
  // ordered after the writes on the stream; nothing is read back. InvalidArgument (nothing
  // changed) for ids out of range, a summary slot twice, sizes that disagree, or counts outside
  // 0 <= old < new <= page_tokens.
  virtual absl::Status UpdateSummaries(absl::Span<const int32_t> sum_slots,
                                       absl::Span<const int32_t> pool_slots,
                                       absl::Span<const int32_t> old_count,
                                       absl::Span<const int32_t> new_count) = 0;
  // Copies summaries within the table: slot dst[i] gets slot src[i]'s min, max and count (a
  // forked sequence's pages). Ordered on the stream. InvalidArgument (nothing changed) for sizes
  // that differ, slots out of range, a destination twice or one that is also a source.
  virtual absl::Status CopySummaries(absl::Span<const int32_t> src,
                                     absl::Span<const int32_t> dst) = 0;
  // Summaries of whole pages straight from token rows (a prefill chunk): page i is rows
  // [i * page_tokens, (i + 1) * page_tokens) of k ([n, kv_heads, head_dim], contiguous, the
  // backend's device, n = sum_slots.size() * page_tokens) and goes to summary slot sum_slots[i]
  // with count page_tokens. One kernel, ordered on the stream. InvalidArgument (nothing changed)
  // for a strided k, a row count that disagrees, or slots out of range or repeated.
  virtual absl::Status SummarizeTokens(const TensorView& k,
                                       absl::Span<const int32_t> sum_slots) = 0;
  // Scores the candidates of every row of `req` against q [batch, q_heads, head_dim] (the
  // backend's device) and selects the top_k per (row, KV head), group scores as req.reduce says:
  // out_indptr [batch * kv_heads + 1] and out_indices (summary slots: the chosen candidates in
  // candidate order, then the row's kept slots), on the host when this returns (it synchronizes
  // the CUDA stream). InvalidArgument for malformed CSRs or slots out of range.
  virtual absl::Status SelectQuest(const TensorView& q, const QuestRequest& req,
                                   std::vector<int32_t>& out_indptr,
                                   std::vector<int32_t>& out_indices) = 0;

  // louiskv's prompt clustering where the backend computes: as kernels::KMeansReference(params,
  // iterations) — `iterations` Lloyd steps from params' centroids, then a final assignment —
  // with every pointer of params in host memory (keys: params.kv.k, no values), results written
  // back there when this returns (it synchronizes the CUDA stream). The CPU backend runs the
  // reference; the CUDA backend the k-means kernels (results may differ from the reference's by
  // rounding). InvalidArgument for params the reference refuses or another head_dim / dtype.
  virtual absl::Status KMeans(const kernels::KMeansParams& params, int iterations) = 0;

  // Stages one step's layers (StagedLayer; layers[l] is what AttendStaged(l, ...) runs), replacing
  // the last staging. Returns the staging generation: it changes whenever what AttendStaged
  // enqueues would read other buffers or launch differently (another batch size or layer count,
  // buffers grown) — a graph captured under an earlier generation must be captured again; one
  // captured under this generation stays valid for every later staging that returns it.
  // InvalidArgument / OutOfRange (nothing staged) for arrays that disagree with each other or
  // the pool (as WriteTokens', UpdateSummaries' and Attend's checks). On CUDA it waits for the
  // last staging's upload, then enqueues one upload on the stream.
  virtual absl::StatusOr<uint64_t> StageLayers(absl::Span<const StagedLayer> layers) = 0;
  // Layer `layer` of the staged step: q [B, q_heads, d] -> o, k / v [B, kv_heads, d] of the new
  // tokens (the backend's device and dtype; contiguous on CUDA). Enqueues the token write, the
  // summary fold, the attention and q's copy, in that order, and nothing else: no host sync, no
  // host work a replay would miss. InvalidArgument (nothing enqueued) for shapes, a layer not
  // staged, or nothing staged.
  virtual absl::Status AttendStaged(int layer, const TensorView& q, const TensorView& k,
                                    const TensorView& v, const TensorView& o) = 0;

  // Waits for everything enqueued (no-op on the CPU backend).
  virtual absl::Status Sync() = 0;
};

// kernels::DType of a store dtype.
inline kernels::DType KernelDType(DType dtype) {
  return dtype == DType::kBf16 ? kernels::DType::kBFloat16 : kernels::DType::kFloat16;
}

// The CPU backend: a host pool and the kernels' C++ references.
std::unique_ptr<WorkerBackend> MakeCpuWorkerBackend();

struct CudaWorkerBackendOptions {
  int device = 0;
  // The engine's stream (a cudaStream_t); the work of a layer is enqueued on it. Null: the legacy
  // default stream.
  void* stream = nullptr;
};

// The CUDA backend on `device` (fp16/bf16, head_dim 64 or 128, up to 8 query heads per KV head).
// Unavailable when Pagoda was built without CUDA, or no such CUDA device is present.
absl::StatusOr<std::unique_ptr<WorkerBackend>> MakeCudaWorkerBackend(
    const CudaWorkerBackendOptions& options = {});

}  // namespace pagoda

#endif  // PAGODA_CLIENT_WORKER_BACKEND_H_
