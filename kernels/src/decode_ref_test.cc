#include <cmath>
#include <limits>
#include <random>
#include <tuple>

#include "decode_problem.h"
#include "gtest/gtest.h"
#include "pagoda/kernels/reference.h"

namespace pagoda::kernels {
namespace {

using testing::BruteDecode;
using testing::DecodeCase;
using testing::DecodeProblem;
using testing::kPoison;
using testing::MakeDecodeProblem;

// Checks o and lse against float64 brute force; rows the definition leaves alone must keep the
// poison.
void ExpectMatchesBrute(const DecodeProblem& pr) {
  const auto want = BruteDecode(pr);
  const double eps = testing::Eps(pr.c.dtype);
  for (size_t i = 0; i < want.lse.size(); ++i) {
    if (std::isnan(want.lse[i])) {  // not computed by definition: untouched
      EXPECT_TRUE(std::isnan(pr.lse[i])) << i;
      for (int d = 0; d < pr.c.head_dim; ++d) {
        ASSERT_EQ(pr.o[i * pr.c.head_dim + d], kPoison) << "head " << i << " written";
      }
      continue;
    }
    if (std::isinf(want.lse[i])) {
      EXPECT_TRUE(std::isinf(pr.lse[i]) && pr.lse[i] < 0) << i;
    } else {
      EXPECT_NEAR(pr.lse[i], want.lse[i], 1e-4 * (1 + std::fabs(want.lse[i]))) << i;
    }
    for (int d = 0; d < pr.c.head_dim; ++d) {
      const size_t j = i * pr.c.head_dim + d;
      const double got = testing::D(pr.o[j], pr.c.dtype);
      ASSERT_FALSE(std::isnan(got)) << "unwritten or NaN output at " << j;
      ASSERT_NEAR(got, want.o[j], eps * std::fabs(want.o[j]) + 1e-4) << "head " << i << " d " << d;
    }
  }
}

class SparseDecodeRef : public ::testing::TestWithParam<std::tuple<DType, int, int, int, bool>> {};

TEST_P(SparseDecodeRef, MatchesFloat64BruteForce) {
  const auto [dtype, dim, group, page_size, per_head] = GetParam();
  std::mt19937 rng(dim * 1000 + group * 10 + page_size);
  DecodeCase c;
  c.dtype = dtype;
  c.head_dim = dim;
  c.group = group;
  c.page_size = page_size;
  c.per_kv_head = per_head;
  c.max_pages = page_size == 1 ? 97 : 97 / page_size + 1;  // rows up to ~97+ tokens
  c.pool_pages = 4 * c.max_pages;
  DecodeProblem pr = MakeDecodeProblem(rng, c);
  ASSERT_TRUE(SparseDecodeReference(pr.params()).ok());
  ExpectMatchesBrute(pr);
}

INSTANTIATE_TEST_SUITE_P(Shapes, SparseDecodeRef,
                         ::testing::Combine(::testing::Values(DType::kFloat16, DType::kBFloat16),
                                            ::testing::Values(64, 128), ::testing::Values(1, 3, 8),
                                            ::testing::Values(1, 16, 32), ::testing::Bool()));

TEST(SparseDecodeRefTest, UnlistedPagesNeverReachTheOutput) {
  std::mt19937 rng(11);
  DecodeCase c;
  c.pool_pages = 200;
  c.max_pages = 4;
  DecodeProblem pr = MakeDecodeProblem(rng, c);
  ASSERT_TRUE(SparseDecodeReference(pr.params()).ok());
  const auto before = pr.o;
  // Overwrite every page no row lists (and the unused tail of every last page) with NaN.
  std::vector<char> listed(c.pool_pages, 0);
  for (int32_t i = 0; i < pr.indptr.back(); ++i) listed[pr.indices[i]] = 1;
  for (int32_t p = 0; p < c.pool_pages; ++p) {
    if (listed[p]) continue;
    std::fill_n(pr.pool.data.begin() + p * pr.pool.page_elems(), pr.pool.page_elems(), kPoison);
  }
  std::fill(pr.o.begin(), pr.o.end(), kPoison);
  ASSERT_TRUE(SparseDecodeReference(pr.params()).ok());
  EXPECT_EQ(pr.o, before);
}

TEST(SparseDecodeRefTest, SharedTableEqualsPerHeadTableWithCopiedRows) {
  std::mt19937 rng(5);
  DecodeCase c;
  c.per_kv_head = false;
  c.kv_heads = 4;
  DecodeProblem shared = MakeDecodeProblem(rng, c);
  ASSERT_TRUE(SparseDecodeReference(shared.params()).ok());
  DecodeProblem per = shared;
  per.c.per_kv_head = true;
  per.indptr = {0};
  per.indices.clear();
  per.last.clear();
  for (int32_t b = 0; b < c.batch; ++b) {
    for (int32_t h = 0; h < c.kv_heads; ++h) {
      per.indices.insert(per.indices.end(), shared.indices.begin() + shared.indptr[b],
                         shared.indices.begin() + shared.indptr[b + 1]);
      per.indptr.push_back(static_cast<int32_t>(per.indices.size()));
      per.last.push_back(shared.last[b]);
    }
  }
  per.indices.push_back(0);
  std::fill(per.o.begin(), per.o.end(), kPoison);
  ASSERT_TRUE(SparseDecodeReference(per.params()).ok());
  EXPECT_EQ(per.o, shared.o);
}

class StreamingRef : public ::testing::TestWithParam<std::tuple<int, int, int>> {};

TEST_P(StreamingRef, MatchesFloat64BruteForce) {
  const auto [sink, window, page_size] = GetParam();
  std::mt19937 rng(sink * 7 + window * 3 + page_size);
  for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
    DecodeCase c;
    c.dtype = dtype;
    c.streaming = true;
    c.kv_heads = 3;
    c.group = 2;
    c.head_dim = 64;
    c.page_size = page_size;
    c.max_pages = 97 / page_size + 2;
    c.pool_pages = 3 * c.max_pages;
    DecodeProblem pr = MakeDecodeProblem(rng, c);
    pr.sink = sink;
    pr.window = window;
    ASSERT_TRUE(StreamingDecodeReference(pr.params()).ok());
    ExpectMatchesBrute(pr);
  }
}

// Sinks and windows that are empty, overlap, or exceed the sequence.
INSTANTIATE_TEST_SUITE_P(Windows, StreamingRef,
                         ::testing::Combine(::testing::Values(0, 4, 50),
                                            ::testing::Values(0, 7, 64), ::testing::Values(1, 16)));

// Every bad input returns an error and leaves the outputs as they were.
TEST(DecodeRefBadInput, RejectedWithoutWriting) {
  std::mt19937 rng(1);
  DecodeCase c;
  c.allow_empty_rows = false;
  DecodeProblem pr = MakeDecodeProblem(rng, c);
  const auto o0 = pr.o;
  auto expect_bad = [&](DecodeParams p, absl::StatusCode code, const char* what) {
    const absl::Status s = SparseDecodeReference(p);
    EXPECT_EQ(s.code(), code) << what << ": " << s;
    EXPECT_EQ(pr.o, o0) << what;
  };
  using C = absl::StatusCode;
  DecodeParams p = pr.params();
  p.num_qo_heads = 7;
  expect_bad(p, C::kInvalidArgument, "qo heads not a multiple");
  p = pr.params();
  p.kv.dtype = static_cast<DType>(9);
  expect_bad(p, C::kInvalidArgument, "dtype");
  p = pr.params();
  p.table.num_rows = c.batch;
  expect_bad(p, C::kInvalidArgument, "rows");
  p = pr.params();
  p.q = nullptr;
  expect_bad(p, C::kInvalidArgument, "null q");
  p = pr.params();
  p.kv.stride_token = 1;
  expect_bad(p, C::kInvalidArgument, "stride");
  p = pr.params();
  p.sm_scale = -1;
  expect_bad(p, C::kInvalidArgument, "scale");
  auto indices = pr.indices;
  indices[3] = c.pool_pages;
  p = pr.params();
  p.table.indices = indices.data();
  expect_bad(p, C::kOutOfRange, "page id past the pool");
  indices[3] = -1;
  expect_bad(p, C::kOutOfRange, "negative page id");
  auto last = pr.last;
  last[2] = 0;
  p = pr.params();
  p.table.last_page_len = last.data();
  expect_bad(p, C::kInvalidArgument, "last_page_len 0");
  last[2] = c.page_size + 1;
  expect_bad(p, C::kInvalidArgument, "last_page_len > page");
  auto indptr = pr.indptr;
  std::swap(indptr[4], indptr[5]);
  p = pr.params();
  p.table.indptr = indptr.data();
  expect_bad(p, C::kInvalidArgument, "indptr decreasing");
  p = pr.params();
  p.is_streaming = nullptr;
  EXPECT_EQ(StreamingDecodeReference(p).code(), C::kInvalidArgument);
  p = pr.params();
  p.sink_tokens = -1;
  EXPECT_EQ(StreamingDecodeReference(p).code(), C::kInvalidArgument);
  EXPECT_EQ(pr.o, o0);
}

}  // namespace
}  // namespace pagoda::kernels
