// CPU reference of page gather (pool -> staging) and scatter (staging -> pool).
#include <algorithm>
#include <cstring>
#include <vector>

#include "pagoda/kernels/reference.h"
#include "validate.h"

namespace pagoda::kernels {

absl::Status GatherPagesReference(const PageCopyParams& p) {
  if (auto s = internal::ValidatePageCopyShape(p); !s.ok()) return s;
  if (auto s = internal::ValidatePageIdsHost(p.pages, p.num_pages, p.pool_pages, "gather");
      !s.ok()) {
    return s;
  }
  for (int32_t i = 0; i < p.num_pages; ++i) {
    std::memcpy(p.staging + i * p.page_bytes, p.pool + p.pages[i] * p.pool_stride_bytes,
                static_cast<size_t>(p.page_bytes));
  }
  return absl::OkStatus();
}

absl::Status ScatterPagesReference(const PageCopyParams& p) {
  if (auto s = internal::ValidatePageCopyShape(p); !s.ok()) return s;
  if (auto s = internal::ValidatePageIdsHost(p.pages, p.num_pages, p.pool_pages, "scatter");
      !s.ok()) {
    return s;
  }
  if (auto s = internal::ValidateDistinctIdsHost(p.pages, p.num_pages, "scatter"); !s.ok())
    return s;
  for (int32_t i = 0; i < p.num_pages; ++i) {
    std::memcpy(p.pool + p.pages[i] * p.pool_stride_bytes, p.staging + i * p.page_bytes,
                static_cast<size_t>(p.page_bytes));
  }
  return absl::OkStatus();
}

absl::Status WriteTokenRowsReference(const TokenRowsParams& p) {
  if (auto s = internal::ValidateTokenRowsShape(p); !s.ok()) return s;
  std::vector<int32_t> rows;
  if (p.rows != nullptr) {
    rows.assign(p.rows, p.rows + 2 * static_cast<int64_t>(p.num_rows));
  } else {
    rows.assign(p.k_rows, p.k_rows + p.num_rows);
    rows.insert(rows.end(), p.v_rows, p.v_rows + p.num_rows);
  }
  if (auto s = internal::ValidatePageIdsHost(rows.data(), static_cast<int64_t>(rows.size()),
                                             p.pool_rows, "token rows");
      !s.ok()) {
    return s;
  }
  if (auto s = internal::ValidateDistinctIdsHost(rows.data(), static_cast<int64_t>(rows.size()),
                                                 "token rows");
      !s.ok()) {
    return s;
  }
  const size_t n = static_cast<size_t>(p.row_bytes);
  for (int32_t i = 0; i < p.num_rows; ++i) {
    std::memcpy(p.pool + int64_t{rows[i]} * p.row_bytes, p.k + internal::TokenRowOffset(p, i, true),
                n);
    std::memcpy(p.pool + int64_t{rows[p.num_rows + i]} * p.row_bytes,
                p.v + internal::TokenRowOffset(p, i, false), n);
  }
  return absl::OkStatus();
}

}  // namespace pagoda::kernels
