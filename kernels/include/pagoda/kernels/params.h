// Parameter structs shared by the CPU references (reference.h) and the CUDA kernels (cuda.h).
//
// Conventions (flashinfer style): every struct is a plain value holding pointers, shapes and
// strides; it never owns memory. Element strides are in elements, byte strides in bytes. The CPU
// references read every pointer on the host; the CUDA entry points read every pointer on the
// device (scalars are copied by value). Shapes are written "[a, b, c]", the last axis contiguous.
//
// Header-only and C++17, so .cu files can include it.
#ifndef PAGODA_KERNELS_PARAMS_H_
#define PAGODA_KERNELS_PARAMS_H_

#include <cstdint>

#include "pagoda/kernels/dtype.h"

namespace pagoda::kernels {

// A paged KV pool. Element (page p, KV head h, token t, dim d) of K is
//   k[p * stride_page + h * stride_head + t * stride_token + d]
// and likewise for V. With the store's page layout ([kv_heads, page_size, head_dim] for K and
// then V inside one page buffer) use stride_token = head_dim, stride_head = page_size * head_dim,
// stride_page = 2 * kv_heads * page_size * head_dim and v = k + kv_heads * page_size * head_dim.
struct PagedKV {
  DType dtype = DType::kBFloat16;
  int32_t num_pages = 0;     // pages in the pool (valid page ids are [0, num_pages))
  int32_t page_size = 16;    // tokens per page (the CUDA kernels need a power of two)
  int32_t num_kv_heads = 0;  // KV heads stored per page
  int32_t head_dim = 0;      // elements per head (CUDA: 64 or 128)
  const uint16_t* k = nullptr;
  const uint16_t* v = nullptr;  // may be null where only keys are read (summaries, k-means)
  int64_t stride_page = 0;
  int64_t stride_head = 0;
  int64_t stride_token = 0;
};

// Returns a PagedKV with the store's packed page layout (see above) over `pages`.
inline PagedKV PackedPagedKV(DType dtype, int32_t num_pages, int32_t page_size,
                             int32_t num_kv_heads, int32_t head_dim, const uint16_t* pages) {
  PagedKV kv;
  kv.dtype = dtype;
  kv.num_pages = num_pages;
  kv.page_size = page_size;
  kv.num_kv_heads = num_kv_heads;
  kv.head_dim = head_dim;
  kv.stride_token = head_dim;
  kv.stride_head = int64_t{page_size} * head_dim;
  kv.stride_page = 2 * int64_t{num_kv_heads} * page_size * head_dim;
  kv.k = pages;
  kv.v = pages == nullptr ? nullptr : pages + int64_t{num_kv_heads} * page_size * head_dim;
  return kv;
}

// A CSR page table: row r attends the tokens of pages indices[indptr[r] .. indptr[r+1]), in
// that order; every page is full except the row's last, which holds last_page_len[r] tokens
// (1 <= last_page_len[r] <= page_size). An empty row (indptr[r] == indptr[r+1]) attends
// nothing: its output is zero and its log-sum-exp is -inf.
struct PageTable {
  int32_t num_rows = 0;
  const int32_t* indptr = nullptr;         // [num_rows + 1], indptr[0] == 0, non-decreasing
  const int32_t* indices = nullptr;        // [indptr[num_rows]] page ids
  const int32_t* last_page_len = nullptr;  // [num_rows]
};

// One decode step of attention: one query token per sequence over paged KV.
//
// GQA: query head hq uses KV head hq / (num_qo_heads / num_kv_heads).
// Sparse decode: the table has one row per (sequence, KV head) when per_kv_head is true
//   (row = b * num_kv_heads + h, a different page set per KV-head group), else one row per
//   sequence shared by all KV heads. The result equals dense attention over exactly the listed
//   tokens.
// Streaming heads: the table has one row per sequence listing ALL of its pages; only KV heads
//   with is_streaming[h] != 0 are computed (the other heads' outputs are left untouched) and they
//   attend only the first sink_tokens tokens and the last window_tokens tokens of the row.
struct DecodeParams {
  PagedKV kv;
  PageTable table;
  int32_t batch = 0;
  int32_t num_qo_heads = 0;
  bool per_kv_head = true;      // sparse decode only: see above
  const uint16_t* q = nullptr;  // [batch, num_qo_heads, head_dim], kv.dtype
  uint16_t* o = nullptr;        // [batch, num_qo_heads, head_dim], kv.dtype
  float* lse = nullptr;         // optional [batch, num_qo_heads], natural log of the softmax sum
                                // of sm_scale * q.k (-inf for an empty row)
  float sm_scale = 0.f;         // softmax scale; 0 means 1 / sqrt(head_dim)
  // Streaming heads only.
  const uint8_t* is_streaming = nullptr;  // [num_kv_heads]
  int32_t sink_tokens = 0;
  int32_t window_tokens = 0;
};

// Block-sparse causal prefill attention of a chunk of new query tokens (LServe-style: streaming
// heads attend sinks + a local window, dense heads every token or selected context pages).
//
// Sequence b's KV is table row b: ALL its tokens, the cached context followed by the chunk (whose
// K/V must already be written to its pages), len_b = the row's token count. Its chunk holds
// n_b = q_indptr[b+1] - q_indptr[b] <= len_b query tokens, the last n_b tokens of the row: query
// row q_indptr[b] + i sits at position t = len_b - n_b + i, and the context is positions
// [0, c_b) with c_b = len_b - n_b. Chunked prefill is a sequence of such calls, each chunk's
// table row one chunk longer.
//
// Query head hq of sequence b at position t attends, with h = hq / (num_qo_heads / num_kv_heads),
// exactly the keys j <= t that h's mask keeps:
//   streaming head (is_streaming[h] != 0):  j < sink_tokens  or  j > t - window_tokens
//     (LServe's Lambda shape; at the row's last position it is StreamingDecode's token set);
//   dense head, select_indptr == null:      every j (dense causal attention);
//   dense head with a selection:            j >= c_b (the chunk, causally), or j < c_b in a
//     selected context page: logical page numbers (page k = positions [k*page_size,
//     (k+1)*page_size) of the row) select_pages[select_indptr[r] .. select_indptr[r+1]) of row
//     r = b * num_kv_heads + h, strictly increasing, each holding context (k * page_size < c_b).
//     Rows of streaming heads are ignored (they must still be well-formed CSR).
// A query with no key (a streaming head with sink_tokens = window_tokens = 0) gets a zero output
// and log-sum-exp -inf. The result equals dense softmax attention over exactly the kept keys.
//
// per_kv_head (a head-granular pool, the decode worker's: each KV head of a page in its own slot
// of head h's sub-pool): the table has batch * num_kv_heads rows and KV head h of sequence b
// reads its pages from row b * num_kv_heads + h (still offset by h * stride_head, as in
// DecodeParams); the rows of one sequence must hold the same number of tokens. Pages a head's
// mask never reads (a streaming head's outside its sinks and window) may be any valid id.
struct PrefillParams {
  PagedKV kv;
  PageTable table;  // num_rows == batch (batch * num_kv_heads when per_kv_head)
  bool per_kv_head = false;
  int32_t batch = 0;
  int32_t num_qo_heads = 0;
  const int32_t* q_indptr = nullptr;  // [batch + 1], q_indptr[0] == 0, non-decreasing
  const uint16_t* q = nullptr;        // [q_indptr[batch], num_qo_heads, head_dim], kv.dtype
  uint16_t* o = nullptr;              // [q_indptr[batch], num_qo_heads, head_dim], kv.dtype
  float* lse = nullptr;  // optional [q_indptr[batch], num_qo_heads], natural log (see DecodeParams)
  float sm_scale = 0.f;  // softmax scale; 0 means 1 / sqrt(head_dim)
  const uint8_t* is_streaming = nullptr;  // [num_kv_heads]; null: every head dense
  int32_t sink_tokens = 0;
  int32_t window_tokens = 0;
  const int32_t* select_indptr = nullptr;  // [batch * num_kv_heads + 1] or null (no selection)
  const int32_t* select_pages = nullptr;   // [select_indptr[batch * num_kv_heads]]
};

// Per-page, per-KV-head key summaries used for page selection. A physical page of page_size
// tokens is split into sub_pages logical sub-pages of page_size / sub_pages tokens each (1 for
// plain Quest; e.g. 4 for 64-token pages scored as 16-token sub-pages, as in LServe).
// Summary element (page p, sub-page s, KV head h, dim d) sits at
//   ((p * sub_pages + s) * num_kv_heads + h) * head_dim + d
// in each of min / max / mean (stored in `dtype`; min and max are exact). count[p] is the number
// of tokens of page p summarized so far; a sub-page that holds none of them has no summary.
struct PageSummaries {
  DType dtype = DType::kBFloat16;
  int32_t num_pages = 0;
  int32_t sub_pages = 1;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  uint16_t* min = nullptr;
  uint16_t* max = nullptr;
  uint16_t* mean = nullptr;
  int32_t* count = nullptr;  // [num_pages]
};

// Summarize new tokens: for each i < num_updates, page pages[i] now holds new_count[i] tokens
// (summaries.count[page] <= new_count[i] <= page_size). min/max merge the new tokens
// [count, new_count) into the stored summary (reset when count == 0); the mean is recomputed over
// all tokens [0, new_count) of each touched sub-page so it never drifts by repeated rounding.
// Pages must not repeat in one call. summaries.mean may be null (no means kept; min / max then
// read only the new tokens).
//
// A head-granular pool (the decode worker's: each KV head of a page in its own slot, summaries in
// a table of their own) sets the three optional arrays; each defaults to `pages`' meaning.
struct SummaryUpdateParams {
  PagedKV kv;  // keys are read; kv.page_size is the physical page size
  PageSummaries summaries;
  int32_t num_updates = 0;
  const int32_t* pages = nullptr;      // [num_updates]
  const int32_t* new_count = nullptr;  // [num_updates]
  // [num_updates * num_kv_heads] or null: head h of update i reads its keys from KV page
  // head_pages[i * num_kv_heads + h] instead of pages[i].
  const int32_t* head_pages = nullptr;
  // [num_updates] or null: update i writes summary page summary_pages[i] (in
  // [0, summaries.num_pages), which then need not equal kv.num_pages) instead of pages[i].
  const int32_t* summary_pages = nullptr;
  // [num_updates] or null: the tokens update i's summary holds before the call (0 resets it), in
  // place of summaries.count (for a caller that recycles summary pages and knows their counts).
  const int32_t* old_count = nullptr;
};

// How the per-query-head Quest bounds of one GQA group are combined into the group's page score.
enum class GroupReduce : uint8_t {
  kMax = 0,  // the page may matter to any head of the group
  kSum = 1,  // total importance over the group's heads
};

// Quest page scoring and top-k selection, one page set per (sequence, KV head).
//
// For query head hq and a sub-page with key summaries (mn, mx), the bound is
//   sum_d max(q_d * mx_d, q_d * mn_d)
// (an upper bound of q.k over the sub-page's keys). A sub-page's group score reduces the bounds
// of the group's query heads (GroupReduce); a physical page scores the max of the group scores of
// its sub-pages holding tokens (-inf if none; a NaN score, from inf/NaN inputs, counts as -inf).
// Sequence b's candidate pages are cand_pages[cand_indptr[b] .. cand_indptr[b+1]); its
// always-kept pages (attention sinks, local window, in the order they should be listed) are
// keep_pages[keep_indptr[b] .. keep_indptr[b+1]) and must not also be candidates.
//
// Outputs, with row r = b * num_kv_heads + h:
//   scores[h * num_candidates + cand_indptr[b] + j]  the score of candidate j  (num_candidates =
//                                                     cand_indptr[batch])
//   out_indptr[r] .. out_indptr[r+1]                  n_sel(b) = min(top_k, n_cand(b)) selected
//                                                     candidates, in candidate order, then the
//                                                     kept pages of b
//   out_last_page_len[r]                              seq_last_page_len[b] when b keeps pages
//                                                     (the last kept page is the partial one),
//                                                     else page_size
// Ties: between equal scores the earlier candidate wins. out_indptr[r] = sum over rows before r.
struct QuestParams {
  int32_t batch = 0;
  int32_t num_qo_heads = 0;
  const uint16_t* q = nullptr;                 // [batch, num_qo_heads, head_dim], summaries.dtype
  PageSummaries summaries;                     // read only; num_kv_heads and head_dim from here
  int32_t page_size = 16;                      // physical page size (for out_last_page_len)
  const int32_t* cand_indptr = nullptr;        // [batch + 1]
  const int32_t* cand_pages = nullptr;         // [cand_indptr[batch]]
  const int32_t* keep_indptr = nullptr;        // [batch + 1]
  const int32_t* keep_pages = nullptr;         // [keep_indptr[batch]]
  const int32_t* seq_last_page_len = nullptr;  // [batch]
  int32_t top_k = 0;
  GroupReduce reduce = GroupReduce::kMax;
  float* scores = nullptr;               // [num_kv_heads, cand_indptr[batch]]
  int32_t* out_indptr = nullptr;         // [batch * num_kv_heads + 1]
  int32_t* out_indices = nullptr;        // [out_indptr[batch * num_kv_heads]]
  int32_t* out_last_page_len = nullptr;  // [batch * num_kv_heads]
};

// Exact attention mass of listed pages for one query token per (sequence, KV head): louiskv's
// rescoring, which orders candidate pages by the softmax mass their tokens hold.
//
// Row r = b * num_kv_heads + h lists entries indptr[r] .. indptr[r+1]; entry e is page
// indices[e] holding page_len[e] tokens (its first ones, 1 <= page_len[e] <= page_size), KV head
// h of it read as in DecodeParams with per_kv_head. With group = num_qo_heads / num_kv_heads,
// query head hq = h * group + g, s = sm_scale and l_gj = q_hq . k_j over the row's listed tokens j:
//   z_g      = sum_j exp((l_gj - max_j l_gj) * s)
//   m_g(e)   = sum_{j in e} exp((l_gj - max_j l_gj) * s) / z_g
//   mass[e]  = m_0(e) (+ or max, GroupReduce) m_1(e) ... m_{group-1}(e)
// so with kSum a row's masses sum to group (each head's to 1). Pages may repeat. The reference
// sums each dot in float over d in order, z_g in double and m_g(e) in float in list order; the
// CUDA kernel equals it up to rounding.
struct PageMassParams {
  PagedKV kv;  // keys are read
  int32_t batch = 0;
  int32_t num_qo_heads = 0;
  const uint16_t* q = nullptr;        // [batch, num_qo_heads, head_dim], kv.dtype
  const int32_t* indptr = nullptr;    // [batch * num_kv_heads + 1], indptr[0] == 0
  const int32_t* indices = nullptr;   // [indptr[batch * num_kv_heads]] page ids
  const int32_t* page_len = nullptr;  // [indptr[batch * num_kv_heads]]
  GroupReduce reduce = GroupReduce::kSum;
  float sm_scale = 0.f;   // 0 means 1 / sqrt(head_dim)
  float* mass = nullptr;  // [indptr[batch * num_kv_heads]], written
  // Rows that end in a stored list (the decode worker keeps each row's candidate slots on the
  // device between steps): with `tails` set, row r's first listed[r + 1] - listed[r] entries are
  // indices / page_len[listed[r] ..] and the rest are tails[r][0 ..] (null when the row has no
  // rest), tail_len tokens each; indptr still numbers every entry (mass). Without tails, listed
  // is unused and entry e is indices / page_len[e].
  const int32_t* listed = nullptr;        // [batch * num_kv_heads + 1], listed[0] == 0
  const int32_t* const* tails = nullptr;  // [batch * num_kv_heads]
  int32_t tail_len = 0;                   // in [1, page_size] with tails
};

// The choice of a step from exact masses (louiskv between retrievals, retriever::SteadyRow):
// row r holds entries indptr[r] .. indptr[r+1] (a PageMassParams call's, with their masses),
// keep[r] kept entries first, then the row's candidates. The row's output
// out[out_indptr[r] .. out_indptr[r+1]) lists kept entries [0, split[r]), then the
// min(need[r], candidates) candidates of greatest mass in candidate order (ties: the earlier
// candidate wins), then kept entries [split[r], keep[r]); each output is its entry's values[e]
// (e.g. a pool slot) and, when out_entry is set, its index in the row (e - indptr[r]) there.
// out_indptr must be the prefix sums of keep[r] + min(need[r], candidates) from 0.
struct MassSelectParams {
  int32_t rows = 0;
  const int32_t* indptr = nullptr;      // [rows + 1], indptr[0] == 0
  const int32_t* keep = nullptr;        // [rows], 0 <= keep <= the row's entries
  const int32_t* split = nullptr;       // [rows], 0 <= split <= keep
  const int32_t* need = nullptr;        // [rows], >= 0
  const float* mass = nullptr;          // [indptr[rows]]
  const int32_t* values = nullptr;      // [indptr[rows]]
  const int32_t* out_indptr = nullptr;  // [rows + 1]
  int32_t* out = nullptr;               // [out_indptr[rows]], written
  int32_t* out_entry = nullptr;         // [out_indptr[rows]] or null, written
};

// k-means over the keys of one sequence, independently per KV head, with squared L2 distance.
// The sequence's tokens are pages[0 .. ceil(num_tokens / page_size)) in order.
// Assignment: assignment[h * num_tokens + t] = argmin_c |k_t - centroid_c|^2 (ties: lowest c).
// Update: centroid_c = mean of the keys assigned to c; a cluster with no keys keeps its centroid.
// cluster_size[h * num_clusters + c] = keys assigned to c.
struct KMeansParams {
  PagedKV kv;
  const int32_t* pages = nullptr;
  int32_t num_tokens = 0;
  int32_t num_clusters = 0;
  float* centroids = nullptr;       // [num_kv_heads, num_clusters, head_dim], in/out
  int32_t* assignment = nullptr;    // [num_kv_heads, num_tokens]
  int32_t* cluster_size = nullptr;  // [num_kv_heads, num_clusters]
};

// Page copies between a pool of fixed-size slots and a contiguous staging buffer.
// Gather: staging[i * page_bytes ..] = pool[pages[i] * pool_stride_bytes ..], page_bytes each.
// Scatter: the reverse; pages must not repeat (two writers of one slot).
struct PageCopyParams {
  uint8_t* pool = nullptr;
  int64_t pool_pages = 0;         // slots in the pool
  int64_t pool_stride_bytes = 0;  // >= page_bytes
  int64_t page_bytes = 0;
  const int32_t* pages = nullptr;  // [num_pages]
  int32_t num_pages = 0;
  uint8_t* staging = nullptr;  // [num_pages * page_bytes]
};

// The decode worker's append of new tokens: row i of k goes to pool row k_rows[i] and row i of v
// to pool row v_rows[i], for i < num_rows (the pool as pool_rows rows of row_bytes each; k and v
// hold num_rows rows of row_bytes each, contiguous). Destinations are in range and all distinct
// (k's and v's together). The row ids travel inside the parameters (no upload before the copy),
// so a call takes at most kMaxTokenRows rows; a caller with more splits them over calls. Or they
// are read from `rows` (the kernel's memory: k's num_rows rows, then v's), any number of them: a
// launch whose parameters stay the same while the ids change (a captured CUDA graph).
inline constexpr int32_t kMaxTokenRows = 128;
struct TokenRowsParams {
  uint8_t* pool = nullptr;
  int64_t pool_rows = 0;
  int64_t row_bytes = 0;
  const uint8_t* k = nullptr;
  const uint8_t* v = nullptr;
  int32_t num_rows = 0;  // 0 .. kMaxTokenRows, any >= 0 with `rows`
  int32_t k_rows[kMaxTokenRows] = {};
  int32_t v_rows[kMaxTokenRows] = {};
  const int32_t* rows = nullptr;  // [2 * num_rows] when set; then k_rows / v_rows are unused
  // k and v as [tokens, heads_per_token, row] with tokens k_token_bytes / v_token_bytes apart
  // (slices of a wider tensor, e.g. a fused QKV projection): row i is row i % heads_per_token of
  // token i / heads_per_token. 0: rows follow each other.
  int32_t heads_per_token = 0;
  int64_t k_token_bytes = 0, v_token_bytes = 0;
};

// Gather of head-pages into a head-granular pool, verified while copying (the decode worker's
// fetch). The pool holds num_kv_heads sub-pools of pool_slots slots each; slot s of head h sits at
//   pool + (h * pool_slots + s) * 2 * half_bytes
// and holds K [page_tokens, head_dim] then V (half_bytes each), which is PagedKV with
// stride_page = 2 * half_bytes / 2 elements and stride_head = pool_slots * stride_page.
// Copy i reads half_bytes at src + src_k[i] and half_bytes at src + src_v[i] (byte offsets into a
// source of src_bytes bytes: the store's host arena, pinned and mapped on the GPU) into slot
// dst_slot[i] of head dst_head[i], computes HeadPageChecksum (head_checksum.h) over what it wrote
// and sets bad[i] = 1 when it differs from expected[i], else 0. A slot whose copy is bad holds
// undefined bytes and must not be attended. Destinations (head, slot) must not repeat.
struct HeadGatherParams {
  const uint8_t* src = nullptr;
  int64_t src_bytes = 0;
  uint8_t* pool = nullptr;
  int32_t num_kv_heads = 0;
  int32_t pool_slots = 0;
  int64_t half_bytes = 0;  // page_tokens * head_dim * 2, a multiple of 16
  int32_t num_copies = 0;
  const int64_t* src_k = nullptr;      // [num_copies]
  const int64_t* src_v = nullptr;      // [num_copies]
  const int32_t* dst_head = nullptr;   // [num_copies]
  const int32_t* dst_slot = nullptr;   // [num_copies]
  const uint64_t* expected = nullptr;  // [num_copies]
  uint8_t* bad = nullptr;              // [num_copies], written
};

// Token rows into store pages (the decode worker's prefill write). Page i holds tokens
// [i * page_size, (i + 1) * page_size) of the rows and is written in the store's page layout (K
// [page_size, head_dim] of every KV head, then V of every head: 2 * num_kv_heads * page_size *
// head_dim elements) at dst + dst_offset[i] bytes — the store's host arena, pinned and mapped on
// the GPU — unless dst_offset[i] < 0 (the store holds the page already: only its checksums are
// wanted). head_sums[i * num_kv_heads + h] is set to the HeadPageChecksum (head_checksum.h) of
// head h of page i: what the worker's verified gather later expects. Element (token t, KV head h,
// dim d) of K is k[t * k_stride_token + h * k_stride_head + d], likewise V. Written pages must
// not overlap.
struct PageAssemblyParams {
  DType dtype = DType::kBFloat16;
  int32_t num_pages = 0;
  int32_t page_size = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  const uint16_t* k = nullptr;  // rows [num_pages * page_size, num_kv_heads, head_dim]
  const uint16_t* v = nullptr;
  int64_t k_stride_token = 0, k_stride_head = 0;
  int64_t v_stride_token = 0, v_stride_head = 0;
  uint8_t* dst = nullptr;
  int64_t dst_bytes = 0;
  const int64_t* dst_offset = nullptr;  // [num_pages]
  uint64_t* head_sums = nullptr;        // [num_pages * num_kv_heads], written
};

}  // namespace pagoda::kernels

#endif  // PAGODA_KERNELS_PARAMS_H_
