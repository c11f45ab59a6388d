// Internal: the pool geometry and the input checks every worker backend shares, so the CPU and
// CUDA backends answer bad input with the same errors.
#ifndef PAGODA_CLIENT_WORKER_WORKER_BACKEND_CHECK_H_
#define PAGODA_CLIENT_WORKER_WORKER_BACKEND_CHECK_H_

#include <cstdint>
#include <functional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "pagoda/client/tensor.h"
#include "pagoda/client/worker_backend.h"
#include "pagoda/kernels/params.h"
#include "pagoda/kvstore/page.h"

namespace pagoda::worker_internal {

struct PoolGeometry {
  PoolGeometry() = default;
  PoolGeometry(const PageLayout& layout, int q_heads, int32_t slots);

  DType dtype = DType::kFp16;
  int kv_heads = 0, q_heads = 0, head_dim = 0, page_tokens = 0;
  int32_t slots = 0;
  int64_t half_bytes = 0;  // page_tokens * head_dim * 2

  int64_t SlotBytes() const { return 2 * half_bytes; }
  int64_t PoolBytes() const { return int64_t{kv_heads} * slots * SlotBytes(); }
  // The pool as the decode kernels see it (head h's sub-pool through stride_head).
  kernels::PagedKV PagedKV(const uint16_t* pool) const;
  // Contiguous token rows [pages * page_tokens, kv_heads, head_dim] seen as `pages` pages (keys
  // only), for summaries computed straight from a prefill chunk.
  kernels::PagedKV RowPages(const uint16_t* rows, int32_t pages) const;
};

absl::Status CheckInit(const PageLayout& layout, int q_heads, int32_t slots);
absl::Status CheckWriteTokens(const PoolGeometry& g, Device device, const TensorView& k,
                              const TensorView& v, absl::Span<const int32_t> slots,
                              absl::Span<const int32_t> positions);
// A [a, b, c] view whose rows follow each other with no gap.
bool Contiguous(const TensorView& t);
// WriteTokens' checked arguments as kernels::TokenRowsParams over `pool`, kMaxTokenRows rows a
// call (fn is called for each; its error stops the loop): the pool as rows of head_dim elements,
// K of (KV head h, slot s, position t) at row ((h * slots + s) * 2) * page_tokens + t, V at that
// + page_tokens. For contiguous k and v only, and a pool whose rows fit int32 row ids
// (TokenRowsFit); callers copy row by row otherwise.
bool TokenRowsFit(const PoolGeometry& g);
// k / v [n, kv_heads, head_dim] whose heads' rows are unit-stride and follow each other within a
// token, tokens any stride apart (slices of a fused QKV projection included).
bool TokenRowsViewable(const TensorView& t);
// A token-row write of k / v (TokenRowsViewable) to staged pool row ids `rows` (TokenRowIds'
// numbering, the kernel's memory): one call for all n x kv_heads rows.
kernels::TokenRowsParams StagedTokenRows(const PoolGeometry& g, uint8_t* pool, const TensorView& k,
                                         const TensorView& v, const int32_t* rows);
// The pool row ids of WriteTokens' arguments (as ForEachTokenRowsCall numbers them): the rows x
// kv_heads K rows, then as many V rows (kernels::TokenRowsParams::rows).
std::vector<int32_t> TokenRowIds(const PoolGeometry& g, absl::Span<const int32_t> slots,
                                 absl::Span<const int32_t> positions);
absl::Status ForEachTokenRowsCall(
    const PoolGeometry& g, uint8_t* pool, const TensorView& k, const TensorView& v,
    absl::Span<const int32_t> slots, absl::Span<const int32_t> positions,
    const std::function<absl::Status(const kernels::TokenRowsParams&)>& fn);
// AssemblePages' arguments as kernels::PageAssemblyParams over `dst` (host offsets and sums).
absl::StatusOr<kernels::PageAssemblyParams> AssemblyParams(const PoolGeometry& g, Device device,
                                                           const TensorView& k, const TensorView& v,
                                                           uint8_t* dst, int64_t dst_bytes,
                                                           absl::Span<const int64_t> dst_offsets,
                                                           absl::Span<uint64_t> head_sums);
absl::Status CheckHeadSlots(const PoolGeometry& g, absl::Span<const HeadSlot> heads, size_t bytes);
// Shapes of q / o and the table's CSR structure (host arrays), rows = batch * kv_heads.
absl::Status CheckAttend(const PoolGeometry& g, Device device, const TensorView& q,
                         const kernels::PageTable& table, const TensorView& o);
// q / o [T, q_heads, head_dim], a kv_heads-row table of equal token counts >= T, the mask.
// A table's CSR structure (host arrays): batch x kv_heads rows, slots in range.
absl::Status CheckTable(const PoolGeometry& g, int64_t batch, const kernels::PageTable& table);
// StageLayers' arrays (StagedLayer): one batch for every layer, token slots and positions as
// WriteTokens', the fold (if any) as UpdateSummaries' over the token slots against a summary table
// of `table_slots` slots, the table as Attend's.
absl::Status CheckStaged(const PoolGeometry& g, int64_t table_slots,
                         absl::Span<const StagedLayer> layers);
// ScorePages' arguments: q [batch, q_heads, head_dim] on `device`, indptr of batch * kv_heads + 1
// non-decreasing entries from 0, one slot (in range) and page_len (in [1, page_tokens]) per entry,
// one mass per entry. Returns the batch.
absl::StatusOr<int32_t> CheckScorePages(const PoolGeometry& g, Device device, const TensorView& q,
                                        absl::Span<const int32_t> indptr,
                                        absl::Span<const int32_t> slots,
                                        absl::Span<const int32_t> page_len, size_t masses);
// AttendBestByMass' arguments: ScorePages' checks over the entries, o like q, and per row keep,
// split, need, out_indptr (the output sizes' prefix sums) and last_page_len consistent.
// list_size(id): the slots stored list `id` holds, -1 when none is stored.
absl::Status CheckMassAttend(const PoolGeometry& g, Device device, const TensorView& q,
                             const MassAttendRequest& req, const TensorView& o,
                             const std::function<int64_t(int64_t)>& list_size);
absl::Status CheckAttendPrefill(const PoolGeometry& g, Device device, const TensorView& q,
                                const kernels::PageTable& table, const PrefillMask& mask,
                                const TensorView& o);

// Summary table writes and Quest requests against a table of `table_slots` slots.
absl::Status CheckWriteSummaries(const PoolGeometry& g, int64_t table_slots,
                                 absl::Span<const int32_t> slots, absl::Span<const uint16_t> min,
                                 absl::Span<const uint16_t> max, absl::Span<const int32_t> count);
absl::Status CheckUpdateSummaries(const PoolGeometry& g, int64_t table_slots,
                                  absl::Span<const int32_t> sum_slots,
                                  absl::Span<const int32_t> pool_slots,
                                  absl::Span<const int32_t> old_count,
                                  absl::Span<const int32_t> new_count);
absl::Status CheckSummarizeTokens(const PoolGeometry& g, int64_t table_slots, Device device,
                                  const TensorView& k, absl::Span<const int32_t> sum_slots);
absl::Status CheckCopySummaries(int64_t table_slots, absl::Span<const int32_t> src,
                                absl::Span<const int32_t> dst);
// A KMeans call's params against the pool's shape (the reference validates the rest).
absl::Status CheckKMeans(const PoolGeometry& g, const kernels::KMeansParams& p, int iterations);
absl::Status CheckQuestRequest(const PoolGeometry& g, int64_t table_slots, Device device,
                               const TensorView& q, const QuestRequest& req);

// Copies a host [a, b, c] view (any non-negative strides) into contiguous `out`.
absl::Status CopyHostTensor(const TensorView& t, absl::Span<uint16_t> out);

}  // namespace pagoda::worker_internal

#endif  // PAGODA_CLIENT_WORKER_WORKER_BACKEND_CHECK_H_
