// Input checks shared by the decode backends, so the CPU and the CUDA backend refuse the same
// inputs with the same errors. All arrays are host memory.
#ifndef PAGODA_CLIENT_SRC_DECODE_BACKEND_CHECK_H_
#define PAGODA_CLIENT_SRC_DECODE_BACKEND_CHECK_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "pagoda/kernels/params.h"
#include "pagoda/kvstore/page.h"

namespace pagoda::decode_internal {

// Init: a valid layout, slots >= 1, q_heads a positive multiple of kv_heads.
absl::Status CheckInit(const PageLayout& layout, int q_heads, int32_t slots);

// Upload: staging holds slots.size() pages; every slot in [0, pool_slots) and none repeated.
// `seen` is scratch (resized to pool_slots, left all zero).
absl::Status CheckUpload(absl::Span<const int32_t> slots, size_t staging_bytes, uint64_t page_bytes,
                         int32_t pool_slots, std::vector<uint8_t>* seen);

// Attend: q and o hold q_heads x head_dim elements; the table has one row per KV head, a valid
// CSR (indptr[0] == 0, non-decreasing, last_page_len in [1, page_tokens] for non-empty rows) and
// slot ids in [0, pool_slots). Returns the most tokens any row attends in *max_row_tokens.
absl::Status CheckAttend(const PageLayout& layout, int q_heads, int32_t pool_slots, size_t q_size,
                         size_t o_size, const kernels::PageTable& table, int64_t* max_row_tokens);

}  // namespace pagoda::decode_internal

#endif  // PAGODA_CLIENT_SRC_DECODE_BACKEND_CHECK_H_
