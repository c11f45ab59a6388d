// CUDA kernels (sm_90) computing the same functions as reference.h, on device memory.
//
// Supported on the GPU: fp16 and bf16; head_dim 64 and 128; up to 8 query heads per KV head;
// power-of-two page sizes (1 .. 1024; 16/32/64 are the tuned ones). Other shapes are rejected
// with InvalidArgument (use the reference).
//
// Plan, then run: Plan* functions look only at shapes (host scalars), may query the device, and
// return the launch configuration and the workspace size. Run functions only enqueue work on
// `stream` (kernels; a split decode may add one small memset, see DecodePlanOptions; no
// allocation, no synchronization, no host reads of device data), so a run can be
// captured in a CUDA graph and replayed with new data in the same buffers. All pointers in the
// params are device pointers; workspaces are caller-owned device buffers of at least
// plan.workspace_bytes, 256-byte aligned, not shared by concurrent runs.
//
// Device data is trusted: page ids, CSR arrays and counts must satisfy the preconditions stated
// in params.h (the references check them; run those checks on the host where inputs are not
// already known to be valid). A run returns an error status only for bad shapes or a failed
// launch.
//
// Thread safety: functions are stateless; concurrent calls are safe on distinct outputs and
// workspaces.
#ifndef PAGODA_KERNELS_CUDA_H_
#define PAGODA_KERNELS_CUDA_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "pagoda/kernels/params.h"

namespace pagoda::kernels::gpu {

struct DecodePlanOptions {
  // Multiprocessors to fill; 0 queries the current device.
  int32_t num_sms = 0;
  // Decode blocks resident per multiprocessor; 0 asks the occupancy calculator. The split picks
  // the chunk count c minimizing waves(c) * (tokens per chunk + chunk_overhead_tokens).
  int32_t blocks_per_sm = 0;
  // Fixed cost of one block (page-table reads, pipeline fill, merge), in tokens of KV work.
  int32_t chunk_overhead_tokens = 128;
  // Smallest KV chunk one block handles when a row is split (tokens).
  int32_t min_chunk_tokens = 128;
  // Upper bound on chunks per row (bounds the workspace and the merge; at most 1024).
  int32_t max_chunks = 64;
  // Merge a split row's partial states inside the decode kernel (the last block of each
  // (sequence, KV head) to finish does it) instead of in a second kernel: one launch per step.
  bool fused_merge = true;
  // The fused merge counts finished blocks in the first plan.counter_bytes() bytes of the
  // workspace. false: every run clears them first (one small memset on the stream). true: the
  // caller zeroes them once (e.g. cudaMemset of the whole workspace after allocating it) and runs
  // skip the memset; each run of this plan leaves them zero again (a run that never finished, or
  // a run of another plan over the same workspace, may not: zero them again then).
  bool zeroed_workspace = false;
  // K/V pipeline depth, 3 or 4 (steps in flight per block, plus the one being computed); 0 picks
  // 3 for rows of at most 16K tokens and 4 above. 3 needs 3/4 of the shared memory, so a fourth
  // block of a GQA-4 group fits on a multiprocessor.
  int32_t pipeline_stages = 0;
};

struct DecodePlan {
  bool streaming = false;
  int32_t batch = 0, num_qo_heads = 0, num_kv_heads = 0, head_dim = 0;
  DType dtype = DType::kBFloat16;
  int32_t num_chunks = 1;      // KV chunks per (sequence, KV head); 1 = no split, no merge
  int32_t chunk_tokens = 0;    // tokens per chunk (the last chunk takes any excess)
  size_t workspace_bytes = 0;  // partial outputs and log-sum-exps of the split
  bool fused_merge = true;     // from DecodePlanOptions
  bool zeroed_workspace = false;
  int32_t pipeline_stages = 4;  // 3 or 4
  // Arrival counters at the start of a fused-merge workspace.
  size_t counter_bytes() const {
    return (num_chunks > 1 && fused_merge) ? static_cast<size_t>(batch) * num_kv_heads * 4 : 0;
  }
};

// Plans sparse decode (streaming = false) or streaming-head attention (streaming = true) for the
// current device (it also prepares the kernels there: plan on each device you run on, before any
// graph capture) and the shapes in `shape` (pointers unused). max_tokens_per_row bounds the tokens
// a row attends (for streaming heads: sink_tokens + window_tokens); rows with more tokens are still
// computed correctly, only with less parallelism.
absl::StatusOr<DecodePlan> PlanDecode(const DecodeParams& shape, bool streaming,
                                      int64_t max_tokens_per_row,
                                      const DecodePlanOptions& options = {});

// Sparse paged decode attention (see DecodeParams). The shapes must match the plan.
absl::Status SparseDecode(const DecodePlan& plan, const DecodeParams& p, void* workspace,
                          cudaStream_t stream);

// Streaming-head attention (see DecodeParams). The shapes must match the plan.
absl::Status StreamingDecode(const DecodePlan& plan, const DecodeParams& p, void* workspace,
                             cudaStream_t stream);

struct PrefillPlanOptions {
  // Query tokens per block: 64 (4 warps) or 128 (8 warps; fewer K/V reads per query for long
  // chunks, half the blocks for short ones).
  int32_t tile_q = 64;
};

struct PrefillPlan {
  int32_t batch = 0, num_qo_heads = 0, num_kv_heads = 0, head_dim = 0;
  DType dtype = DType::kBFloat16;
  int32_t tile_q = 64;
  int32_t max_q_tiles = 0;     // ceil(max queries per sequence / tile_q): the grid's first axis
  size_t workspace_bytes = 0;  // none needed today; kept so callers allocate through the plan
};

// Plans block-sparse prefill (PrefillParams) for the shapes in `shape` (pointers unused) on the
// current device (prepares the kernels there: plan before any graph capture).
// max_queries_per_seq bounds q_indptr[b+1] - q_indptr[b] (queries past it are not computed: a
// precondition violation). InvalidArgument for tile_q other than 64 / 128, head_dim other than
// 64 / 128, or bad counts, before touching the device.
absl::StatusOr<PrefillPlan> PlanPrefill(const PrefillParams& shape, int64_t max_queries_per_seq,
                                        const PrefillPlanOptions& options = {});

// Block-sparse causal prefill attention (see PrefillParams): one block per (query tile, query
// head, sequence), QK^T and PV on tensor cores (mma.sync m16n8k16, fp32 accumulation, P rounded
// to the storage type), K/V tiles of 64 keys double-buffered through cp.async. A block visits
// only the key tiles its mask can keep (causal and Lambda-shaped skipping, selected pages
// gathered), masking inside the boundary tiles. Keys the mask drops that share a 64-key step with
// kept ones are still read (with P = 0), so every token of a row must hold finite K and V (the
// reference never reads dropped keys). The shapes must match the plan.
absl::Status BlockSparsePrefill(const PrefillPlan& plan, const PrefillParams& p, void* workspace,
                                cudaStream_t stream);

// Page summary update (see SummaryUpdateParams). No workspace.
absl::Status UpdateSummaries(const SummaryUpdateParams& p, cudaStream_t stream);

struct QuestPlan {
  int32_t batch = 0, num_qo_heads = 0, num_kv_heads = 0, head_dim = 0, sub_pages = 1;
  int32_t max_candidates = 0;  // per sequence
  size_t workspace_bytes = 0;  // none needed today; kept so callers allocate through the plan
};

// Plans Quest scoring + top-k for the shapes in `shape`; max_candidates_per_seq bounds
// cand_indptr[b+1] - cand_indptr[b] (a larger count is a precondition violation: the extra
// candidates are not scored).
absl::StatusOr<QuestPlan> PlanQuest(const QuestParams& shape, int32_t max_candidates_per_seq);

// Quest scoring and top-k selection (see QuestParams), writing scores and the output CSR table.
absl::Status QuestSelect(const QuestPlan& plan, const QuestParams& p, void* workspace,
                         cudaStream_t stream);

// k-means steps (see KMeansParams). Update needs KMeansWorkspaceBytes(p) of workspace.
size_t KMeansWorkspaceBytes(const KMeansParams& p);
absl::Status KMeansAssign(const KMeansParams& p, cudaStream_t stream);
absl::Status KMeansUpdate(const KMeansParams& p, void* workspace, cudaStream_t stream);

// Page gather / scatter (see PageCopyParams). 16-byte copies when pool, staging, the stride and
// page_bytes are all 16-byte aligned, byte copies otherwise.
absl::Status GatherPages(const PageCopyParams& p, cudaStream_t stream);
absl::Status ScatterPages(const PageCopyParams& p, cudaStream_t stream);

// New tokens' K / V rows into their pool rows (see TokenRowsParams): one kernel, the row ids in
// its parameters (nothing uploaded first). Shapes are checked here; ids must satisfy the
// reference's checks (in range, distinct), which this does not repeat. 16-byte copies when the
// pool, k, v and row_bytes are 16-byte aligned, byte copies otherwise.
absl::Status WriteTokenRows(const TokenRowsParams& p, cudaStream_t stream);

// Verified head-page gather (see HeadGatherParams): src is device-accessible (a pinned host
// arena mapped with cudaHostRegisterMapped, or device memory); the offsets (K/V of each copy, 16-
// byte aligned like src and pool) must satisfy the reference's checks, which this does not repeat.
absl::Status GatherHeadPages(const HeadGatherParams& p, cudaStream_t stream);

// Prefill page assembly (see PageAssemblyParams): k / v in device memory, dst device-accessible
// (the pinned host arena mapped with cudaHostRegisterMapped), 16-byte aligned like the strides
// and every dst_offset; the offsets must satisfy ValidatePageAssembly (not repeated here).
absl::Status AssemblePages(const PageAssemblyParams& p, cudaStream_t stream);

// Exact page masses (see PageMassParams) and, when options.select is set, the step's choice from
// them (see MassSelectParams; its rows, indptr and mass must be this call's: rows = batch *
// num_kv_heads, the same indptr and mass pointers). num_entries is the call's indptr[batch *
// num_kv_heads] (known to the host; it spreads each row over enough blocks), the workspace holds
// PageMassWorkspaceBytes(num_entries, group) bytes with group = num_qo_heads / num_kv_heads (at
// most 8). Page ids, lengths and the choice's arrays must satisfy the references' checks (not
// repeated here). The choice's values may be null: each output is then its entry's page id (as
// PageMassParams reads it, listed or from a tail). Dots and exponentials in float on the device:
// masses equal to the reference up to rounding; the choice is MassSelectReference's over these
// masses. Two kernels on `stream`.
// options.copies: small copies the finishing kernel makes on the side (e.g. tensors the host
// reads later, into pinned mapped memory), each its bytes from src to dst: none is an operation
// of its own on the stream (at one sequence a launch gap and a copy cost ~2-3 us apiece on an
// H100, more than their bytes). Addresses and sizes 16-byte aligned, ranges not overlapping the
// call's other arrays; done when the call's work is.
struct SideCopies {
  static constexpr int kMax = 4;
  int32_t n = 0;
  const void* src[kMax] = {};
  void* dst[kMax] = {};
  int64_t bytes[kMax] = {};
};
struct PageMassOptions {
  const MassSelectParams* select = nullptr;
  SideCopies copies;
};
size_t PageMassWorkspaceBytes(int64_t num_entries, int32_t group);
absl::Status PageMass(const PageMassParams& p, int64_t num_entries, void* workspace,
                      const PageMassOptions& options, cudaStream_t stream);

}  // namespace pagoda::kernels::gpu

#endif  // PAGODA_KERNELS_CUDA_H_
