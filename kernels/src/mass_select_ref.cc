// CPU reference of the choice of a step from exact masses (MassSelectParams).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"
#include "pagoda/kernels/reference.h"
#include "validate.h"

namespace pagoda::kernels {

namespace internal {

absl::Status ValidateMassSelectHost(const MassSelectParams& p) {
  if (p.rows < 0) return absl::InvalidArgumentError("mass select: rows < 0");
  if (p.indptr == nullptr || p.keep == nullptr || p.split == nullptr || p.need == nullptr ||
      p.out_indptr == nullptr || (p.rows > 0 && (p.out == nullptr))) {
    return absl::InvalidArgumentError("mass select: missing array");
  }
  if (p.indptr[0] != 0 || p.out_indptr[0] != 0) {
    return absl::InvalidArgumentError("mass select: indptr and out_indptr must start at 0");
  }
  if (p.indptr[p.rows] > 0 && (p.mass == nullptr || p.values == nullptr)) {
    return absl::InvalidArgumentError("mass select: missing masses or values");
  }
  for (int32_t r = 0; r < p.rows; ++r) {
    const int32_t n = p.indptr[r + 1] - p.indptr[r];
    if (n < 0) return absl::InvalidArgumentError("mass select: indptr decreases");
    if (p.keep[r] < 0 || p.keep[r] > n || p.split[r] < 0 || p.split[r] > p.keep[r] ||
        p.need[r] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("mass select: row ", r, " has keep / split / need out of range"));
    }
    const int32_t size = p.keep[r] + std::min(p.need[r], n - p.keep[r]);
    if (p.out_indptr[r + 1] - p.out_indptr[r] != size) {
      return absl::InvalidArgumentError(absl::StrCat("mass select: out_indptr gives row ", r, " ",
                                                     p.out_indptr[r + 1] - p.out_indptr[r],
                                                     " entries, it selects ", size));
    }
  }
  return absl::OkStatus();
}

}  // namespace internal

absl::Status MassSelectReference(const MassSelectParams& p) {
  if (auto s = internal::ValidateMassSelectHost(p); !s.ok()) return s;
  for (int64_t e = 0; e < p.indptr[p.rows]; ++e) {
    if (!std::isfinite(p.mass[e]))
      return absl::InvalidArgumentError("mass select: non-finite mass");
  }
  std::vector<int32_t> order;
  for (int32_t r = 0; r < p.rows; ++r) {
    const int32_t first = p.indptr[r], keep = p.keep[r], split = p.split[r];
    const int32_t cand = p.indptr[r + 1] - first - keep;
    const int32_t k = std::min(p.need[r], cand);
    // Candidates by mass, larger first, ties to the earlier (a strict order: one best-k set).
    order.resize(cand);
    std::iota(order.begin(), order.end(), 0);
    const float* m = p.mass + first + keep;
    if (k < cand) {
      std::nth_element(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
        return m[a] > m[b] || (m[a] == m[b] && a < b);
      });
      order.resize(k);
      std::sort(order.begin(), order.end());
    }
    int32_t o = p.out_indptr[r];
    auto emit = [&](int32_t i) {  // i: the entry's index in the row
      p.out[o] = p.values[first + i];
      if (p.out_entry != nullptr) p.out_entry[o] = i;
      ++o;
    };
    for (int32_t i = 0; i < split; ++i) emit(i);
    for (int32_t c : order) emit(keep + c);
    for (int32_t i = split; i < keep; ++i) emit(i);
  }
  return absl::OkStatus();
}

}  // namespace pagoda::kernels
