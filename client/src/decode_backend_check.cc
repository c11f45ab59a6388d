#include "decode_backend_check.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace pagoda::decode_internal {

absl::Status CheckInit(const PageLayout& layout, int q_heads, int32_t slots) {
  if (absl::Status s = layout.Validate(); !s.ok()) return s;
  if (slots < 1) return absl::InvalidArgumentError("pool slots must be >= 1");
  if (q_heads < 1 || q_heads % static_cast<int>(layout.kv_heads) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("q_heads ", q_heads, " is not a multiple of kv_heads ", layout.kv_heads));
  }
  return absl::OkStatus();
}

absl::Status CheckUpload(absl::Span<const int32_t> slots, size_t staging_bytes, uint64_t page_bytes,
                         int32_t pool_slots, std::vector<uint8_t>* seen) {
  if (staging_bytes != slots.size() * page_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("staging holds ", staging_bytes, " bytes, expected ", slots.size(), " pages"));
  }
  seen->resize(pool_slots, 0);
  absl::Status status;
  size_t i = 0;
  for (; i < slots.size(); ++i) {
    const int32_t s = slots[i];
    if (s < 0 || s >= pool_slots) {
      status = absl::InvalidArgumentError(
          absl::StrCat("upload: slot ", s, " at ", i, " not in [0, ", pool_slots, ")"));
      break;
    }
    if ((*seen)[s] != 0) {
      status = absl::InvalidArgumentError(absl::StrCat("upload: slot ", s, " appears twice"));
      break;
    }
    (*seen)[s] = 1;
  }
  for (size_t j = 0; j < i; ++j) (*seen)[slots[j]] = 0;
  return status;
}

absl::Status CheckAttend(const PageLayout& layout, int q_heads, int32_t pool_slots, size_t q_size,
                         size_t o_size, const kernels::PageTable& table, int64_t* max_row_tokens) {
  const size_t n = static_cast<size_t>(q_heads) * layout.head_dim;
  if (q_size != n || o_size != n) {
    return absl::InvalidArgumentError(absl::StrCat("q / o must hold ", n, " elements"));
  }
  const int32_t rows = static_cast<int32_t>(layout.kv_heads);
  if (table.num_rows != rows) {
    return absl::InvalidArgumentError(absl::StrCat("page table has ", table.num_rows,
                                                   " rows, expected one per KV head (", rows, ")"));
  }
  if (table.indptr == nullptr || table.last_page_len == nullptr ||
      (table.indices == nullptr && table.indptr[rows] > 0)) {
    return absl::InvalidArgumentError("page table: null array");
  }
  if (table.indptr[0] != 0) return absl::InvalidArgumentError("page table: indptr[0] must be 0");
  const int32_t page = static_cast<int32_t>(layout.page_tokens);
  int64_t most = 0;
  for (int32_t r = 0; r < rows; ++r) {
    const int32_t n_pages = table.indptr[r + 1] - table.indptr[r];
    if (n_pages < 0) {
      return absl::InvalidArgumentError(absl::StrCat("page table: indptr decreases at row ", r));
    }
    if (n_pages == 0) continue;
    const int32_t last = table.last_page_len[r];
    if (last < 1 || last > page) {
      return absl::InvalidArgumentError(
          absl::StrCat("page table: last_page_len[", r, "] = ", last, " not in [1, ", page, "]"));
    }
    most = std::max<int64_t>(most, int64_t{n_pages - 1} * page + last);
  }
  for (int32_t i = 0; i < table.indptr[rows]; ++i) {
    if (table.indices[i] < 0 || table.indices[i] >= pool_slots) {
      return absl::OutOfRangeError(absl::StrCat("page table: slot ", table.indices[i], " at ", i,
                                                " not in [0, ", pool_slots, ")"));
    }
  }
  *max_row_tokens = most;
  return absl::OkStatus();
}

}  // namespace pagoda::decode_internal
