#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "mass_select_problem.h"
#include "pagoda/kernels/reference.h"

namespace pagoda::kernels {
namespace {

using testing::MakeMassSelectProblem;
using testing::MassSelectProblem;

// Row r's output from first principles: candidates stably sorted by mass (larger first), the
// first k taken, listed by index between the kept entries before and after the split.
std::vector<int32_t> BruteRow(const MassSelectProblem& pr, int32_t r) {
  const int32_t first = pr.indptr[r], keep = pr.keep[r];
  const int32_t cand = pr.indptr[r + 1] - first - keep;
  std::vector<int32_t> order(cand);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return pr.mass[first + keep + a] > pr.mass[first + keep + b];
  });
  order.resize(std::min(pr.need[r], cand));
  std::sort(order.begin(), order.end());
  std::vector<int32_t> entries;
  for (int32_t i = 0; i < pr.split[r]; ++i) entries.push_back(i);
  for (int32_t c : order) entries.push_back(keep + c);
  for (int32_t i = pr.split[r]; i < keep; ++i) entries.push_back(i);
  return entries;
}

TEST(MassSelectRef, MatchesFirstPrinciples) {
  for (int levels : {0, 3, 50}) {  // continuous masses, then many ties
    for (uint32_t seed = 1; seed <= 6; ++seed) {
      SCOPED_TRACE(::testing::Message() << "levels " << levels << " seed " << seed);
      MassSelectProblem pr = MakeMassSelectProblem(17, 1500, levels, seed);
      ASSERT_TRUE(MassSelectReference(pr.params()).ok());
      for (int32_t r = 0; r < pr.rows(); ++r) {
        const std::vector<int32_t> want = BruteRow(pr, r);
        const std::vector<int32_t> got(pr.out_entry.begin() + pr.out_indptr[r],
                                       pr.out_entry.begin() + pr.out_indptr[r + 1]);
        ASSERT_EQ(got, want) << "row " << r;
        for (size_t i = 0; i < got.size(); ++i) {
          EXPECT_EQ(pr.out[pr.out_indptr[r] + i], pr.values[pr.indptr[r] + got[i]]);
        }
      }
    }
  }
}

TEST(MassSelectRef, OutEntryIsOptional) {
  MassSelectProblem pr = MakeMassSelectProblem(5, 300, 0, 9);
  MassSelectParams p = pr.params();
  ASSERT_TRUE(MassSelectReference(p).ok());
  const std::vector<int32_t> with = pr.out;
  std::fill(pr.out.begin(), pr.out.end(), -1);
  p.out_entry = nullptr;
  ASSERT_TRUE(MassSelectReference(p).ok());
  EXPECT_EQ(pr.out, with);
}

TEST(MassSelectRef, RejectsBadInputAndWritesNothing) {
  auto fresh = [] { return MakeMassSelectProblem(4, 200, 0, 3); };
  auto refused = [](MassSelectProblem& pr, const char* what) {
    EXPECT_EQ(MassSelectReference(pr.params()).code(), absl::StatusCode::kInvalidArgument) << what;
    EXPECT_TRUE(std::all_of(pr.out.begin(), pr.out.end(), [](int32_t x) { return x == -1; }))
        << what;
  };
  {
    MassSelectProblem pr = fresh();
    pr.keep[1] = pr.indptr[2] - pr.indptr[1] + 1;
    refused(pr, "keep past the row");
  }
  {
    MassSelectProblem pr = fresh();
    pr.split[2] = pr.keep[2] + 1;
    refused(pr, "split past keep");
  }
  {
    MassSelectProblem pr = fresh();
    pr.need[0] = -1;
    refused(pr, "negative need");
  }
  {
    MassSelectProblem pr = fresh();
    pr.out_indptr[1] += 1;
    refused(pr, "out_indptr not the output sizes");
  }
  {
    MassSelectProblem pr = fresh();
    std::swap(pr.indptr[1], pr.indptr[2]);
    refused(pr, "indptr decreasing");
  }
  {
    MassSelectProblem pr = fresh();
    ASSERT_GT(pr.mass.size(), 0u);
    pr.mass.back() = NAN;
    refused(pr, "NaN mass");
  }
}

}  // namespace
}  // namespace pagoda::kernels
