#include <algorithm>
#include <cmath>
#include <random>
#include <tuple>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "pagoda/kernels/reference.h"
#include "test_util.h"

namespace pagoda::kernels {
namespace {

using testing::D;

struct Summaries {
  std::vector<uint16_t> min, max, mean;
  std::vector<int32_t> count;
  PageSummaries view(DType t, int32_t pages, int32_t subs, int32_t heads, int32_t dim) {
    return {t, pages, subs, heads, dim, min.data(), max.data(), mean.data(), count.data()};
  }
};

Summaries MakeSummaries(int32_t pages, int32_t subs, int32_t heads, int32_t dim) {
  const size_t n = size_t{1} * pages * subs * heads * dim;
  return {std::vector<uint16_t>(n, 0x7fc1), std::vector<uint16_t>(n, 0x7fc1),
          std::vector<uint16_t>(n, 0x7fc1), std::vector<int32_t>(pages, 0)};
}

// Checks page p's summary against float64 min / max / mean of its first count[p] tokens.
void ExpectSummaryOfPage(const testing::Pool& pool, Summaries& s, int32_t subs, int32_t p) {
  const PagedKV kv = pool.kv();
  const int32_t sub = kv.page_size / subs;
  const int32_t n = s.count[p];
  for (int32_t sp = 0; sp < subs && sp * sub < n; ++sp) {
    const int32_t end = std::min(n, (sp + 1) * sub);
    for (int32_t h = 0; h < kv.num_kv_heads; ++h) {
      for (int32_t d = 0; d < kv.head_dim; ++d) {
        double mn = INFINITY, mx = -INFINITY, sum = 0;
        for (int32_t t = sp * sub; t < end; ++t) {
          const double x =
              D(kv.k[p * kv.stride_page + h * kv.stride_head + t * kv.stride_token + d], kv.dtype);
          mn = std::min(mn, x);
          mx = std::max(mx, x);
          sum += x;
        }
        const double mean = sum / (end - sp * sub);
        const size_t at = ((size_t{1} * p * subs + sp) * kv.num_kv_heads + h) * kv.head_dim + d;
        ASSERT_EQ(D(s.min[at], kv.dtype), mn) << "page " << p << " sub " << sp;
        ASSERT_EQ(D(s.max[at], kv.dtype), mx) << "page " << p << " sub " << sp;
        ASSERT_NEAR(D(s.mean[at], kv.dtype), mean, testing::Eps(kv.dtype) * std::fabs(mean) + 1e-6)
            << "page " << p << " sub " << sp;
      }
    }
  }
}

class SummaryRef : public ::testing::TestWithParam<std::tuple<DType, int, std::pair<int, int>>> {};

// Pages fill in random steps (one token at a time, a few, or whole); after every step the
// summary equals the summary computed from scratch.
TEST_P(SummaryRef, IncrementalEqualsFromScratch) {
  const auto [dtype, dim, shape] = GetParam();
  const auto [page_size, subs] = shape;
  std::mt19937 rng(dim + page_size * 10 + subs);
  const int32_t pages = 23, heads = 3;
  const testing::Pool pool = testing::RandomPool(rng, dtype, pages, page_size, heads, dim);
  Summaries s = MakeSummaries(pages, subs, heads, dim);
  std::uniform_int_distribution<int32_t> step(0, std::max(1, page_size / 3));
  for (int round = 0; round < 3 * page_size + 3; ++round) {
    std::vector<int32_t> ids, counts;
    for (int32_t p = 0; p < pages; ++p) {
      if ((p + round) % 3 == 0) continue;  // not every page in every call
      ids.push_back(p);
      counts.push_back(std::min(page_size, s.count[p] + step(rng)));
    }
    SummaryUpdateParams up;
    up.kv = pool.kv();
    up.summaries = s.view(dtype, pages, subs, heads, dim);
    up.num_updates = static_cast<int32_t>(ids.size());
    up.pages = ids.data();
    up.new_count = counts.data();
    ASSERT_TRUE(UpdateSummariesReference(up).ok());
    for (size_t i = 0; i < ids.size(); ++i) {
      ASSERT_EQ(s.count[ids[i]], counts[i]);
      ExpectSummaryOfPage(pool, s, subs, ids[i]);
    }
  }
  for (int32_t p = 0; p < pages; ++p) EXPECT_EQ(s.count[p], page_size) << p;
}

INSTANTIATE_TEST_SUITE_P(Shapes, SummaryRef,
                         ::testing::Combine(::testing::Values(DType::kFloat16, DType::kBFloat16),
                                            ::testing::Values(64, 128),
                                            // (page_size, sub_pages)
                                            ::testing::Values(std::pair{1, 1}, std::pair{16, 1},
                                                              std::pair{16, 4}, std::pair{64, 1},
                                                              std::pair{64, 4})));

TEST(SummaryRefBadInput, RejectedWithoutWriting) {
  std::mt19937 rng(2);
  const int32_t pages = 8, heads = 2, dim = 64, ps = 16;
  const testing::Pool pool = testing::RandomPool(rng, DType::kBFloat16, pages, ps, heads, dim);
  Summaries s = MakeSummaries(pages, 1, heads, dim);
  s.count[1] = 5;
  const Summaries before = s;
  std::vector<int32_t> ids = {0, 1, 2}, counts = {3, 6, 16};
  auto params = [&] {
    SummaryUpdateParams up;
    up.kv = pool.kv();
    up.summaries = s.view(DType::kBFloat16, pages, 1, heads, dim);
    up.num_updates = 3;
    up.pages = ids.data();
    up.new_count = counts.data();
    return up;
  };
  auto expect_bad = [&](const SummaryUpdateParams& up, const char* what) {
    EXPECT_FALSE(UpdateSummariesReference(up).ok()) << what;
    EXPECT_EQ(s.min, before.min) << what;
    EXPECT_EQ(s.mean, before.mean) << what;
    EXPECT_EQ(s.count, before.count) << what;
  };
  ids = {0, 1, 0};
  expect_bad(params(), "page twice");
  ids = {0, 1, 8};
  expect_bad(params(), "page out of range");
  ids = {0, 1, 2};
  counts = {3, 4, 16};
  expect_bad(params(), "count shrinks");
  counts = {3, 6, 17};
  expect_bad(params(), "count past page");
  counts = {3, 6, 16};
  auto up = params();
  up.summaries.dtype = DType::kFloat16;
  expect_bad(up, "dtype mismatch");
  up = params();
  up.summaries.sub_pages = 3;
  expect_bad(up, "sub_pages does not divide page_size");
  std::vector<int32_t> head_pages = {0, 1, 2, 3, 4, 8}, sum_pages = {5, 6, 7}, old = {0, 5, 0};
  up = params();
  up.head_pages = head_pages.data();
  expect_bad(up, "head page out of range");
  head_pages[5] = 5;
  up.summary_pages = sum_pages.data();
  sum_pages[2] = 8;
  expect_bad(up, "summary page out of range");
  sum_pages = {5, 6, 5};
  expect_bad(up, "summary page twice");
  sum_pages = {5, 6, 7};
  up.old_count = old.data();
  old[1] = 7;
  expect_bad(up, "count shrinks from the caller's old count");
  old[1] = 5;
  EXPECT_TRUE(UpdateSummariesReference(up).ok());
  EXPECT_TRUE(UpdateSummariesReference(params()).ok());
}

// The decode worker's shape: each KV head of a page in a slot of its own (head_pages), summaries
// in a table of other ids (summary_pages) whose stale counts the caller overrides (old_count), no
// means. Tokens arrive one or a few at a time; after every call a page's min / max are those of
// exactly its tokens so far (a recycled summary page keeps nothing of its last owner).
TEST(SummaryRefHeadGranular, FoldsExactlyTheWrittenTokens) {
  std::mt19937 rng(7);
  const int32_t slots = 12, heads = 3, dim = 64, ps = 16, table = 5;
  for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
    const testing::Pool pool = testing::RandomPool(rng, dtype, slots, ps, heads, dim);
    Summaries s = MakeSummaries(table, 1, heads, dim);
    s.count.assign(table, 9);  // stale: a previous owner's
    // Two logical pages: page A in summary slot 3, page B in summary slot 0; per head slots.
    const std::vector<int32_t> slots_a = {7, 2, 11}, slots_b = {0, 9, 4};
    const std::vector<int32_t> sum_ids = {3, 0};
    int32_t count_a = 0, count_b = 0;
    std::uniform_int_distribution<int32_t> step(1, 3);
    while (count_a < ps || count_b < ps) {
      const int32_t next_a = std::min(ps, count_a + step(rng));
      const int32_t next_b = std::min(ps, count_b + step(rng));
      std::vector<int32_t> head_pages = slots_a, olds = {count_a, count_b}, news = {next_a, next_b};
      head_pages.insert(head_pages.end(), slots_b.begin(), slots_b.end());
      SummaryUpdateParams up;
      up.kv = pool.kv();
      up.summaries = s.view(dtype, table, 1, heads, dim);
      up.summaries.mean = nullptr;
      up.num_updates = 2;
      up.pages = sum_ids.data();
      up.new_count = news.data();
      up.head_pages = head_pages.data();
      up.summary_pages = sum_ids.data();
      up.old_count = olds.data();
      ASSERT_TRUE(UpdateSummariesReference(up).ok());
      count_a = next_a;
      count_b = next_b;
      const PagedKV kv = pool.kv();
      for (int which = 0; which < 2; ++which) {
        const int32_t n = which == 0 ? count_a : count_b;
        const int32_t sp = sum_ids[which];
        ASSERT_EQ(s.count[sp], n);
        for (int32_t h = 0; h < heads; ++h) {
          const int32_t slot = (which == 0 ? slots_a : slots_b)[h];
          for (int32_t d = 0; d < dim; ++d) {
            double mn = INFINITY, mx = -INFINITY;
            for (int32_t t = 0; t < n; ++t) {
              const double x =
                  D(kv.k[slot * kv.stride_page + h * kv.stride_head + t * kv.stride_token + d],
                    dtype);
              mn = std::min(mn, x);
              mx = std::max(mx, x);
            }
            const size_t at = (size_t{1} * sp * heads + h) * dim + d;
            ASSERT_EQ(D(s.min[at], dtype), mn) << "page " << which << " head " << h;
            ASSERT_EQ(D(s.max[at], dtype), mx) << "page " << which << " head " << h;
          }
        }
      }
    }
    EXPECT_EQ(s.mean, MakeSummaries(table, 1, heads, dim).mean) << "no means were written";
  }
}

}  // namespace
}  // namespace pagoda::kernels
