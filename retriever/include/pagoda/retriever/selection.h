// The retriever's answer for one decode step: which KV each GQA group reads.
//
// A Selection carries the CSR page table the sparse decode kernels consume (flashinfer's
// paged_kv_t: indptr / indices / last_page_len, one row per KV head, i.e. per GQA group), the
// exact token positions those pages hold (what attention will see), prefetch hints for the store,
// and the costs of producing it. Plain data: not synchronized.
#ifndef PAGODA_RETRIEVER_SELECTION_H_
#define PAGODA_RETRIEVER_SELECTION_H_

#include <cstdint>
#include <vector>

#include "pagoda/kernels/params.h"

namespace pagoda::retriever {

// CSR page table. Row r reads pages indices[indptr[r] .. indptr[r+1]), in that order; every page
// of a row is full (page_tokens tokens) except the last, which holds last_page_len[r] tokens.
// A row with no pages has last_page_len 0.
struct PageTable {
  std::vector<int32_t> indptr{0};      // [rows + 1], indptr[0] == 0, non-decreasing
  std::vector<int32_t> indices;        // [indptr.back()] page ids in the policy's page layout
  std::vector<int32_t> last_page_len;  // [rows]
  int num_rows() const { return static_cast<int>(indptr.size()) - 1; }
};

// Token positions [begin, end) of the sequence.
struct TokenSpan {
  int32_t begin = 0;
  int32_t end = 0;
  int32_t size() const { return end - begin; }
};

struct Selection {
  // The page table (one row per KV head). For page policies the ids are the sequence's natural
  // pages (page p holds positions [p * page_tokens, (p + 1) * page_tokens)). The boundary policy
  // addresses a per-head cluster-ordered layout instead; see boundary_selector.h.
  PageTable pages;
  // Per row: the positions attended, sorted and disjoint. Always consistent with `pages`.
  std::vector<std::vector<TokenSpan>> spans;
  // Per row: natural page ids likely to be needed soon (best first, none already selected), so the
  // store can promote them ahead of the next retrieval.
  std::vector<std::vector<int32_t>> prefetch;
  // True when this step ran a fresh retrieval; false when it reused an earlier selection.
  bool retrieved = false;
  // Bytes of summaries / index entries scanned to produce this step's selection (0 on reuse).
  int64_t summary_bytes = 0;
  // Bytes of K and V (fp16) held by the selected pages, all rows.
  int64_t kv_bytes = 0;
};

// A view of `table` in the kernels' CSR struct (valid while `table` lives and is not changed).
inline kernels::PageTable AsKernelTable(const PageTable& table) {
  kernels::PageTable t;
  t.num_rows = table.num_rows();
  t.indptr = table.indptr.data();
  t.indices = table.indices.data();
  t.last_page_len = table.last_page_len.data();
  return t;
}

}  // namespace pagoda::retriever

#endif  // PAGODA_RETRIEVER_SELECTION_H_
