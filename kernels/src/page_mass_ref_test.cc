#include <cmath>
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "page_mass_problem.h"
#include "pagoda/kernels/reference.h"

namespace pagoda::kernels {
namespace {

using testing::BrutePageMass;
using testing::MakePageMassProblem;
using testing::PageMassCase;
using testing::PageMassProblem;

class PageMassRefTest
    : public ::testing::TestWithParam<std::tuple<DType, int, int, GroupReduce, float>> {};

TEST_P(PageMassRefTest, MatchesFloat64) {
  PageMassCase c;
  c.dtype = std::get<0>(GetParam());
  c.head_dim = std::get<1>(GetParam());
  c.group = std::get<2>(GetParam());
  c.reduce = std::get<3>(GetParam());
  c.q_scale = std::get<4>(GetParam());
  for (uint32_t seed = 1; seed <= 4; ++seed) {
    PageMassProblem pr = MakePageMassProblem(c, seed);
    ASSERT_TRUE(PageMassReference(pr.params()).ok());
    const std::vector<double> want = BrutePageMass(pr);
    for (int32_t r = 0; r + 1 < static_cast<int32_t>(pr.indptr.size()); ++r) {
      double total = 0;
      for (int32_t e = pr.indptr[r]; e < pr.indptr[r + 1]; ++e) {
        // fp16 / bf16 inputs are exact in float; what differs is float accumulation.
        EXPECT_NEAR(pr.mass[e], want[e], 1e-5 * c.group + 1e-4 * want[e]) << "entry " << e;
        total += pr.mass[e];
      }
      if (c.reduce == GroupReduce::kSum && pr.indptr[r + 1] > pr.indptr[r]) {
        EXPECT_NEAR(total, c.group, 1e-4 * c.group) << "row " << r;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, PageMassRefTest,
                         ::testing::Combine(::testing::Values(DType::kBFloat16, DType::kFloat16),
                                            ::testing::Values(64, 128), ::testing::Values(1, 4),
                                            ::testing::Values(GroupReduce::kSum, GroupReduce::kMax),
                                            ::testing::Values(0.25f, 2.f)));

TEST(PageMassRef, SharperPageWinsAndRepeatsCountTwice) {
  PageMassCase c;
  c.batch = 1;
  c.kv_heads = 1;
  c.group = 1;
  PageMassProblem pr = MakePageMassProblem(c, 9);
  // Page 3's keys all equal the query (scaled up): it holds almost all the mass. Page 5 is
  // listed twice: both entries get the same mass.
  const PagedKV kv = pr.pool.kv();
  for (int32_t t = 0; t < c.page_size; ++t) {
    for (int j = 0; j < c.head_dim; ++j) {
      pr.pool.data[3 * kv.stride_page + t * kv.stride_token + j] =
          FromFloat(4.f * ToFloat(pr.q[j], c.dtype), c.dtype);
    }
  }
  pr.indptr = {0, 4};
  pr.indices = {5, 3, 7, 5};
  pr.page_len = {16, 16, 16, 16};
  pr.mass.assign(4, -1.f);
  ASSERT_TRUE(PageMassReference(pr.params()).ok());
  EXPECT_GT(pr.mass[1], 0.99f);
  EXPECT_EQ(pr.mass[0], pr.mass[3]);
  EXPECT_NEAR(pr.mass[0] + pr.mass[1] + pr.mass[2] + pr.mass[3], 1.0, 1e-5);
}

TEST(PageMassRef, RowsEndingInStoredListsEqualTheSameRowsListed) {
  for (uint32_t seed = 1; seed <= 6; ++seed) {
    PageMassCase c;
    c.batch = 3;
    c.max_entries = 20;
    c.group = seed % 2 ? 4 : 1;
    PageMassProblem pr = MakePageMassProblem(c, seed);
    testing::SplitRows split = testing::SplitIntoTails(pr, seed + 100);
    ASSERT_TRUE(PageMassReference(pr.params()).ok());
    const std::vector<float> listed = pr.mass;
    pr.mass.assign(pr.mass.size(), -1.f);
    ASSERT_TRUE(PageMassReference(split.params(pr)).ok());
    EXPECT_EQ(pr.mass, listed) << "seed " << seed;  // the same sums in the same order
  }
}

TEST(PageMassRef, BadTailsChangeNothing) {
  PageMassCase c;
  c.max_entries = 20;
  PageMassProblem pr = MakePageMassProblem(c, 5);
  testing::SplitRows split = testing::SplitIntoTails(pr, 6);
  int32_t with_tail = -1;  // a row with a tail
  for (size_t r = 0; r < split.tails.size(); ++r) {
    if (!split.tails[r].empty()) with_tail = static_cast<int32_t>(r);
  }
  ASSERT_GE(with_tail, 0);
  const std::vector<float> before = pr.mass;
  auto expect_bad = [&](PageMassParams p, const char* what,
                        absl::StatusCode code = absl::StatusCode::kInvalidArgument) {
    const absl::Status s = PageMassReference(p);
    EXPECT_EQ(s.code(), code) << what << ": " << s;
    EXPECT_EQ(pr.mass, before) << what;
  };
  {
    std::vector<const int32_t*> ptrs = split.tail_ptrs;
    ptrs[with_tail] = nullptr;
    PageMassParams p = split.params(pr);
    p.tails = ptrs.data();
    expect_bad(p, "a row with a rest and no tail");
  }
  {
    std::vector<int32_t> tail = split.tails[with_tail];
    tail.back() = c.pool_pages;
    std::vector<const int32_t*> ptrs = split.tail_ptrs;
    ptrs[with_tail] = tail.data();
    PageMassParams p = split.params(pr);
    p.tails = ptrs.data();
    expect_bad(p, "a tail page out of range", absl::StatusCode::kOutOfRange);
  }
  {
    std::vector<int32_t> listed = split.listed;
    listed[with_tail + 1] += static_cast<int32_t>(split.tails[with_tail].size()) + 1;
    for (size_t r = with_tail + 2; r < listed.size(); ++r) listed[r] = listed[with_tail + 1];
    PageMassParams p = split.params(pr);
    p.listed = listed.data();
    expect_bad(p, "more listed than the row holds");
  }
  for (int32_t len : {0, c.page_size + 1}) {
    PageMassParams p = split.params(pr);
    p.tail_len = len;
    expect_bad(p, "tail_len out of [1, page_size]");
  }
  {
    PageMassParams p = split.params(pr);
    p.listed = nullptr;
    expect_bad(p, "tails without listed");
  }
}

TEST(PageMassRef, BadInputChangesNothing) {
  PageMassCase c;
  PageMassProblem pr = MakePageMassProblem(c, 3);
  const std::vector<float> before = pr.mass;
  auto expect_bad = [&](PageMassParams p, const char* what,
                        absl::StatusCode code = absl::StatusCode::kInvalidArgument) {
    const absl::Status s = PageMassReference(p);
    EXPECT_EQ(s.code(), code) << what << ": " << s;
    EXPECT_EQ(pr.mass, before) << what;
  };
  {
    PageMassParams p = pr.params();
    p.num_qo_heads = c.kv_heads * c.group + 1;
    expect_bad(p, "heads not a multiple");
  }
  {
    std::vector<int32_t> bad = pr.indices;
    bad[0] = c.pool_pages;
    PageMassParams p = pr.params();
    p.indices = bad.data();
    expect_bad(p, "page out of range", absl::StatusCode::kOutOfRange);
  }
  {
    std::vector<int32_t> bad = pr.page_len;
    bad[0] = c.page_size + 1;
    PageMassParams p = pr.params();
    p.page_len = bad.data();
    expect_bad(p, "page too long");
    bad[0] = 0;
    expect_bad(p, "empty page");
  }
  {
    std::vector<int32_t> bad = pr.indptr;
    bad[1] = bad[2] + 1;
    PageMassParams p = pr.params();
    p.indptr = bad.data();
    expect_bad(p, "indptr decreasing");
  }
  {
    std::vector<uint16_t> bad = pr.q;
    bad[5] = FromFloat(INFINITY, c.dtype);
    PageMassParams p = pr.params();
    p.q = bad.data();
    expect_bad(p, "non-finite query");
  }
  {
    PageMassParams p = pr.params();
    p.mass = nullptr;
    expect_bad(p, "null mass");
  }
}

}  // namespace
}  // namespace pagoda::kernels
