// Random MassSelectParams problems shared by the reference test and the GPU test.
#ifndef PAGODA_KERNELS_SRC_MASS_SELECT_PROBLEM_H_
#define PAGODA_KERNELS_SRC_MASS_SELECT_PROBLEM_H_

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "pagoda/kernels/params.h"

namespace pagoda::kernels::testing {

struct MassSelectProblem {
  std::vector<int32_t> indptr = {0}, keep, split, need, values, out_indptr = {0};
  std::vector<float> mass;
  std::vector<int32_t> out, out_entry;
  int32_t rows() const { return static_cast<int32_t>(keep.size()); }
  MassSelectParams params() {
    MassSelectParams p;
    p.rows = rows();
    p.indptr = indptr.data();
    p.keep = keep.data();
    p.split = split.data();
    p.need = need.data();
    p.mass = mass.data();
    p.values = values.data();
    p.out_indptr = out_indptr.data();
    p.out = out.data();
    p.out_entry = out_entry.data();
    return p;
  }
};

// `rows` rows of up to max_entries entries; masses drawn from `levels` distinct values when
// levels > 0 (many ties), else continuous.
inline MassSelectProblem MakeMassSelectProblem(int32_t rows, int32_t max_entries, int levels,
                                               uint32_t seed) {
  std::mt19937 rng(seed);
  MassSelectProblem pr;
  for (int32_t r = 0; r < rows; ++r) {
    const int32_t n = std::uniform_int_distribution<int32_t>(0, max_entries)(rng);
    const int32_t keep = std::uniform_int_distribution<int32_t>(0, std::min(n, 80))(rng);
    const int32_t split = std::uniform_int_distribution<int32_t>(0, keep)(rng);
    const int32_t need = std::uniform_int_distribution<int32_t>(0, n - keep + 3)(rng);
    pr.keep.push_back(keep);
    pr.split.push_back(split);
    pr.need.push_back(need);
    for (int32_t e = 0; e < n; ++e) {
      pr.values.push_back(static_cast<int32_t>(rng() % 100000));
      pr.mass.push_back(levels > 0 ? static_cast<float>(rng() % levels) / levels
                                   : std::uniform_real_distribution<float>(0.f, 1.f)(rng));
    }
    pr.indptr.push_back(pr.indptr.back() + n);
    pr.out_indptr.push_back(pr.out_indptr.back() + keep + std::min(need, n - keep));
  }
  pr.out.assign(pr.out_indptr.back(), -1);
  pr.out_entry.assign(pr.out_indptr.back(), -1);
  return pr;
}

}  // namespace pagoda::kernels::testing

#endif  // PAGODA_KERNELS_SRC_MASS_SELECT_PROBLEM_H_
