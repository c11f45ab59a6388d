// Input checks shared by the CPU references and the CUDA entry points. The *Shape checks look
// only at scalars and pointer presence (valid for device pointers too); the *Host checks also read
// the index arrays and must only be given host memory.
#ifndef PAGODA_KERNELS_SRC_VALIDATE_H_
#define PAGODA_KERNELS_SRC_VALIDATE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "pagoda/kernels/params.h"

namespace pagoda::kernels::internal {

absl::Status ValidatePagedKV(const PagedKV& kv, bool need_v);
absl::Status ValidateDecodeShape(const DecodeParams& p, bool streaming);
absl::Status ValidateSummariesShape(const PageSummaries& s);
absl::Status ValidateSummaryUpdateShape(const SummaryUpdateParams& p);
absl::Status ValidateQuestShape(const QuestParams& p);
absl::Status ValidateKMeansShape(const KMeansParams& p);
absl::Status ValidatePageCopyShape(const PageCopyParams& p);
absl::Status ValidateTokenRowsShape(const TokenRowsParams& p);
// Where row i of k (or v) starts in its source, in bytes (TokenRowsParams::heads_per_token);
// host and device code.
#if defined(__CUDACC__)
#define PAGODA_ROWS_HD __host__ __device__ __forceinline__
#else
#define PAGODA_ROWS_HD inline
#endif
PAGODA_ROWS_HD int64_t TokenRowOffset(const TokenRowsParams& p, int64_t i, bool k) {
  if (p.heads_per_token <= 0) return i * p.row_bytes;
  return (i / p.heads_per_token) * (k ? p.k_token_bytes : p.v_token_bytes) +
         (i % p.heads_per_token) * p.row_bytes;
}
#undef PAGODA_ROWS_HD
absl::Status ValidateHeadGatherShape(const HeadGatherParams& p);
// Offsets in [0, src_bytes - half_bytes], heads and slots in range, no (head, slot) twice.
absl::Status ValidateHeadGatherHost(const HeadGatherParams& p);
absl::Status ValidatePrefillShape(const PrefillParams& p);
absl::Status ValidatePageAssemblyShape(const PageAssemblyParams& p);
// Offsets inside dst and written pages apart (reads dst_offset on the host).
absl::Status ValidatePageAssemblyHost(const PageAssemblyParams& p);

absl::Status ValidatePageMassShape(const PageMassParams& p);
// indptr non-decreasing from 0, page ids in range, page_len in [1, page_size] (host arrays).
absl::Status ValidatePageMassHost(const PageMassParams& p);

// MassSelectParams with host arrays: the CSRs, counts and output sizes (masses not read).
absl::Status ValidateMassSelectHost(const MassSelectParams& p);

// Page ids in [0, num_pages).
absl::Status ValidatePageIdsHost(const int32_t* ids, int64_t n, int64_t num_pages,
                                 const char* what);
// No id listed twice (InvalidArgument naming the first repeated id otherwise).
absl::Status ValidateDistinctIdsHost(const int32_t* ids, int64_t n, const char* what);
// indptr[0] == 0, non-decreasing; ids in range; last_page_len in [1, page_size] for non-empty
// rows (when last_page_len is given).
absl::Status ValidateCsrHost(const int32_t* indptr, const int32_t* indices,
                             const int32_t* last_page_len, int32_t rows, int64_t num_pages,
                             int32_t page_size, const char* what);

// Everything of PrefillParams the host can check on host copies of its arrays: the page table,
// q_indptr against the rows' lengths, the selection rows (see params.h).
absl::Status ValidatePrefillHost(const PrefillParams& p);

}  // namespace pagoda::kernels::internal

#endif  // PAGODA_KERNELS_SRC_VALIDATE_H_
