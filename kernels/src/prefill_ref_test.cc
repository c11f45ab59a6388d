#include <cmath>
#include <random>
#include <tuple>

#include "gtest/gtest.h"
#include "pagoda/kernels/reference.h"
#include "prefill_problem.h"

namespace pagoda::kernels {
namespace {

using testing::BrutePrefill;
using testing::HeadGranular;
using testing::kPoison;
using testing::MakeHeadGranular;
using testing::MakePrefillProblem;
using testing::PrefillCase;
using testing::PrefillProblem;

void ExpectMatchesBrute(const PrefillProblem& pr) {
  const auto want = BrutePrefill(pr);
  const double eps = testing::Eps(pr.c.dtype);
  const int32_t dim = pr.c.head_dim;
  for (size_t i = 0; i < want.lse.size(); ++i) {
    if (std::isinf(want.lse[i])) {
      EXPECT_TRUE(std::isinf(pr.lse[i]) && pr.lse[i] < 0) << i;
    } else {
      EXPECT_NEAR(pr.lse[i], want.lse[i], 1e-4 * (1 + std::fabs(want.lse[i]))) << i;
    }
    for (int32_t d = 0; d < dim; ++d) {
      const size_t j = i * dim + d;
      const double got = testing::D(pr.o[j], pr.c.dtype);
      ASSERT_FALSE(std::isnan(got)) << "unwritten or NaN output at " << j;
      ASSERT_NEAR(got, want.o[j], eps * std::fabs(want.o[j]) + 1e-4) << "row " << i << " d " << d;
    }
  }
}

class PrefillRef : public ::testing::TestWithParam<std::tuple<DType, int, int, int, bool>> {};

TEST_P(PrefillRef, MatchesFloat64BruteForce) {
  const auto [dtype, dim, group, page_size, select] = GetParam();
  std::mt19937 rng(dim * 1000 + group * 10 + page_size + (select ? 7 : 0));
  PrefillCase c;
  c.dtype = dtype;
  c.head_dim = dim;
  c.group = group;
  c.page_size = page_size;
  c.select = select;
  c.kv_heads = 3;  // streaming, dense, streaming
  PrefillProblem pr = MakePrefillProblem(rng, c);
  ASSERT_TRUE(BlockSparsePrefillReference(pr.params()).ok());
  ExpectMatchesBrute(pr);
}

INSTANTIATE_TEST_SUITE_P(Shapes, PrefillRef,
                         ::testing::Combine(::testing::Values(DType::kFloat16, DType::kBFloat16),
                                            ::testing::Values(64, 128), ::testing::Values(1, 3),
                                            ::testing::Values(1, 16), ::testing::Bool()));

// Sinks and windows that are empty (queries with no key at all), overlap, or exceed the row.
class PrefillWindows : public ::testing::TestWithParam<std::tuple<int, int>> {};

TEST_P(PrefillWindows, MatchesFloat64BruteForce) {
  const auto [sink, window] = GetParam();
  std::mt19937 rng(sink * 31 + window);
  PrefillCase c;
  c.sink = sink;
  c.window = window;
  c.streaming = {1, 0, 1, 1};
  c.kv_heads = 4;
  c.group = 2;
  c.page_size = 8;
  PrefillProblem pr = MakePrefillProblem(rng, c);
  ASSERT_TRUE(BlockSparsePrefillReference(pr.params()).ok());
  ExpectMatchesBrute(pr);
}

INSTANTIATE_TEST_SUITE_P(Masks, PrefillWindows,
                         ::testing::Combine(::testing::Values(0, 5, 200),
                                            ::testing::Values(0, 1, 33, 500)));

// The (single-sequence) decode problem of query i of sequence b: its row is the prefix of b's
// pages up to and including position t, its query heads those of query row q_indptr[b] + i.
struct DecodeAt {
  std::vector<int32_t> indptr, indices, last;
  std::vector<uint16_t> o;
  std::vector<float> lse;
  DecodeParams p;
};

DecodeAt DecodeFor(PrefillProblem& pr, int32_t b, int32_t i) {
  DecodeAt d;
  const int64_t t = pr.context[b] + i;
  const int32_t np = static_cast<int32_t>(t / pr.c.page_size + 1);
  d.indices.assign(pr.indices.begin() + pr.indptr[b], pr.indices.begin() + pr.indptr[b] + np);
  d.indptr = {0, np};
  d.last = {static_cast<int32_t>(t % pr.c.page_size + 1)};
  const size_t row = size_t{1} * (pr.q_indptr[b] + i) * pr.qo_heads();
  d.o.assign(size_t{1} * pr.qo_heads() * pr.c.head_dim, kPoison);
  d.lse.assign(pr.qo_heads(), 0.f);
  d.p.kv = pr.pool.kv();
  d.p.table = {1, d.indptr.data(), d.indices.data(), d.last.data()};
  d.p.batch = 1;
  d.p.num_qo_heads = pr.qo_heads();
  d.p.per_kv_head = false;
  d.p.q = pr.q.data() + row * pr.c.head_dim;
  d.p.o = d.o.data();
  d.p.lse = d.lse.data();
  d.p.is_streaming = pr.streaming_heads.data();
  d.p.sink_tokens = pr.c.sink;
  d.p.window_tokens = pr.c.window;
  return d;
}

// Every head dense and no selection: each query row is dense causal attention, i.e. the decode
// reference over the row's prefix. Same float operations in the same order: bit-identical.
TEST(PrefillRefTest, AllDenseEqualsDenseCausalAttention) {
  for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
    std::mt19937 rng(static_cast<int>(dtype) + 3);
    PrefillCase c;
    c.dtype = dtype;
    c.streaming = {0, 0};
    PrefillProblem pr = MakePrefillProblem(rng, c);
    ASSERT_TRUE(BlockSparsePrefillReference(pr.params()).ok());
    for (int32_t b = 0; b < c.batch; ++b) {
      for (int32_t i = 0; i < pr.q_indptr[b + 1] - pr.q_indptr[b]; ++i) {
        DecodeAt d = DecodeFor(pr, b, i);
        ASSERT_TRUE(SparseDecodeReference(d.p).ok());
        const size_t row = size_t{1} * (pr.q_indptr[b] + i) * pr.qo_heads();
        for (size_t e = 0; e < d.o.size(); ++e) {
          ASSERT_EQ(pr.o[row * c.head_dim + e], d.o[e]) << "b " << b << " i " << i << " e " << e;
        }
        for (int32_t hq = 0; hq < pr.qo_heads(); ++hq) EXPECT_EQ(pr.lse[row + hq], d.lse[hq]);
      }
    }
  }
}

// Every head streaming: each query row is streaming-head decode attention (first sink_tokens and
// last window_tokens tokens of the row's prefix), bit-identical.
TEST(PrefillRefTest, StreamingEqualsSinkPlusWindowAttention) {
  for (auto [sink, window] : {std::pair{4, 19}, std::pair{0, 16}, std::pair{16, 1}}) {
    std::mt19937 rng(sink + window);
    PrefillCase c;
    c.streaming = {1, 1};
    c.sink = sink;
    c.window = window;
    c.max_context = 150;
    PrefillProblem pr = MakePrefillProblem(rng, c);
    ASSERT_TRUE(BlockSparsePrefillReference(pr.params()).ok());
    for (int32_t b = 0; b < c.batch; ++b) {
      for (int32_t i = 0; i < pr.q_indptr[b + 1] - pr.q_indptr[b]; ++i) {
        DecodeAt d = DecodeFor(pr, b, i);
        ASSERT_TRUE(StreamingDecodeReference(d.p).ok());
        const size_t row = size_t{1} * (pr.q_indptr[b] + i) * pr.qo_heads();
        for (size_t e = 0; e < d.o.size(); ++e) {
          ASSERT_EQ(pr.o[row * c.head_dim + e], d.o[e]) << "b " << b << " i " << i << " e " << e;
        }
      }
    }
  }
}

// Selecting every context page is dense attention (same keys, same order: bit-identical).
TEST(PrefillRefTest, SelectingEveryContextPageEqualsDense) {
  std::mt19937 rng(17);
  PrefillCase c;
  c.streaming = {0, 1, 0};
  c.kv_heads = 3;
  c.select = true;
  PrefillProblem pr = MakePrefillProblem(rng, c);
  pr.sel_indptr = {0};
  pr.sel_pages.clear();
  for (int32_t b = 0; b < c.batch; ++b) {
    for (int32_t h = 0; h < c.kv_heads; ++h) {
      for (int32_t k = 0; k * c.page_size < pr.context[b]; ++k) pr.sel_pages.push_back(k);
      pr.sel_indptr.push_back(static_cast<int32_t>(pr.sel_pages.size()));
    }
  }
  pr.sel_pages.push_back(0);
  ASSERT_TRUE(BlockSparsePrefillReference(pr.params()).ok());
  PrefillProblem dense = pr;
  dense.c.select = false;
  std::fill(dense.o.begin(), dense.o.end(), kPoison);
  ASSERT_TRUE(BlockSparsePrefillReference(dense.params()).ok());
  EXPECT_EQ(pr.o, dense.o);
}

// A prompt prefilled in two chunks (the second with the first as its context) gives the rows of
// a prefill in one chunk.
TEST(PrefillRefTest, ChunkedPrefillEqualsOneChunk) {
  std::mt19937 rng(23);
  PrefillCase c;
  c.min_chunk = 20;
  c.max_chunk = 90;
  c.kv_heads = 4;
  c.streaming = {1, 0, 0, 1};
  c.page_size = 16;
  PrefillProblem whole = MakePrefillProblem(rng, c);
  ASSERT_TRUE(BlockSparsePrefillReference(whole.params()).ok());
  // Split each sequence's chunk after its first `first[b]` queries.
  std::vector<int32_t> first;
  for (int32_t b = 0; b < c.batch; ++b) {
    first.push_back((whole.q_indptr[b + 1] - whole.q_indptr[b]) / 3);
  }
  PrefillProblem one = whole, two = whole;  // chunk 1 (truncated rows), chunk 2 (full rows)
  one.indptr = {0};
  one.indices.clear();
  one.last.clear();
  one.q_indptr = {0};
  two.q_indptr = {0};
  one.q.clear();
  two.q.clear();
  const size_t qrow = size_t{1} * whole.qo_heads() * c.head_dim;
  for (int32_t b = 0; b < c.batch; ++b) {
    const int32_t n = whole.q_indptr[b + 1] - whole.q_indptr[b];
    const int32_t len1 = whole.context[b] + first[b];
    const int32_t np = (len1 + c.page_size - 1) / c.page_size;
    one.indices.insert(one.indices.end(), whole.indices.begin() + whole.indptr[b],
                       whole.indices.begin() + whole.indptr[b] + np);
    one.indptr.push_back(static_cast<int32_t>(one.indices.size()));
    one.last.push_back(np == 0 ? c.page_size : len1 - (np - 1) * c.page_size);
    one.q_indptr.push_back(one.q_indptr.back() + first[b]);
    two.q_indptr.push_back(two.q_indptr.back() + n - first[b]);
    const auto q0 = whole.q.begin() + whole.q_indptr[b] * qrow;
    one.q.insert(one.q.end(), q0, q0 + first[b] * qrow);
    two.q.insert(two.q.end(), q0 + first[b] * qrow, q0 + n * qrow);
    two.context[b] = len1;
  }
  one.indices.push_back(0);
  for (PrefillProblem* pr : {&one, &two}) {
    pr->q.resize(std::max<size_t>(pr->q.size(), qrow));
    pr->o.assign(pr->q.size(), kPoison);
    ASSERT_TRUE(BlockSparsePrefillReference(pr->params()).ok());
  }
  for (int32_t b = 0; b < c.batch; ++b) {
    const int32_t n = whole.q_indptr[b + 1] - whole.q_indptr[b];
    for (int32_t i = 0; i < n; ++i) {
      const bool in_one = i < first[b];
      const PrefillProblem& part = in_one ? one : two;
      const int32_t row = part.q_indptr[b] + (in_one ? i : i - first[b]);
      for (size_t e = 0; e < qrow; ++e) {
        ASSERT_EQ(part.o[row * qrow + e], whole.o[(whole.q_indptr[b] + i) * qrow + e])
            << "b " << b << " i " << i;
      }
    }
  }
}

// K and V a mask does not keep never reach the output: overwrite them with NaN, get the same bits.
TEST(PrefillRefTest, UnkeptKeysNeverReachTheOutput) {
  std::mt19937 rng(29);
  PrefillCase c;
  c.select = true;
  c.kv_heads = 4;
  c.streaming = {1, 0, 1, 0};
  c.max_context = 160;
  c.sink = 3;
  c.window = 9;
  PrefillProblem pr = MakePrefillProblem(rng, c);
  ASSERT_TRUE(BlockSparsePrefillReference(pr.params()).ok());
  const auto before = pr.o;
  const PagedKV kv = pr.pool.kv();
  int64_t poisoned = 0;
  for (int32_t b = 0; b < c.batch; ++b) {
    const int32_t n = pr.q_indptr[b + 1] - pr.q_indptr[b];
    const int64_t len = pr.context[b] + n;
    for (int32_t h = 0; h < c.kv_heads; ++h) {
      for (int64_t j = 0; j < len; ++j) {
        bool kept = false;
        for (int32_t i = 0; i < n && !kept; ++i) {
          kept = testing::PrefillKeeps(pr, b, h, pr.context[b] + i, j);
        }
        if (kept) continue;
        const int64_t off = pr.indices[pr.indptr[b] + j / c.page_size] * kv.stride_page +
                            h * kv.stride_head + (j % c.page_size) * kv.stride_token;
        std::fill_n(pr.pool.data.begin() + off, c.head_dim, kPoison);
        std::fill_n(pr.pool.data.begin() + off + (kv.v - kv.k), c.head_dim, kPoison);
        ++poisoned;
      }
    }
  }
  ASSERT_GT(poisoned, 100);
  std::fill(pr.o.begin(), pr.o.end(), kPoison);
  ASSERT_TRUE(BlockSparsePrefillReference(pr.params()).ok());
  EXPECT_EQ(pr.o, before);
}

// A head-granular pool read through per-KV-head rows (the decode worker's pool) gives the same
// attention as the packed pool, bit for bit: streaming and dense heads, with and without
// selected context pages.
TEST(PrefillRefTest, PerKvHeadRowsEqualThePackedTable) {
  for (bool select : {false, true}) {
    std::mt19937 rng(select ? 41 : 40);
    PrefillCase c;
    c.kv_heads = 3;
    c.select = select;
    PrefillProblem pr = MakePrefillProblem(rng, c);
    ASSERT_TRUE(BlockSparsePrefillReference(pr.params()).ok());
    const auto o = pr.o;
    const auto lse = pr.lse;
    std::fill(pr.o.begin(), pr.o.end(), kPoison);
    const HeadGranular g = MakeHeadGranular(rng, pr);
    ASSERT_TRUE(BlockSparsePrefillReference(g.params(pr)).ok());
    EXPECT_EQ(pr.o, o) << "select " << select;
    EXPECT_EQ(pr.lse, lse) << "select " << select;
  }
}

TEST(PrefillRefBadInput, PerKvHeadRowsOfOneSequenceMustHoldEqualTokens) {
  std::mt19937 rng(43);
  PrefillCase c;
  c.min_chunk = 5;
  PrefillProblem pr = MakePrefillProblem(rng, c);
  HeadGranular g = MakeHeadGranular(rng, pr);
  const auto o0 = pr.o;
  PrefillParams p = g.params(pr);
  p.table.num_rows = c.batch;  // one row per sequence: not per KV head
  EXPECT_EQ(BlockSparsePrefillReference(p).code(), absl::StatusCode::kInvalidArgument);
  g.last[1] = g.last[1] == 1 ? 2 : g.last[1] - 1;  // sequence 0's head 1 one token shorter
  EXPECT_EQ(BlockSparsePrefillReference(g.params(pr)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pr.o, o0);
}

// Every bad input returns an error and leaves the outputs as they were.
TEST(PrefillRefBadInput, RejectedWithoutWriting) {
  std::mt19937 rng(2);
  PrefillCase c;
  c.select = true;
  c.min_chunk = 5;
  c.max_context = 60;
  PrefillProblem pr = MakePrefillProblem(rng, c);
  while (pr.context[1] < 2 * c.page_size) pr = MakePrefillProblem(rng, c);
  const auto o0 = pr.o;
  using C = absl::StatusCode;
  auto expect_bad = [&](const PrefillParams& p, C code, const char* what) {
    const absl::Status s = BlockSparsePrefillReference(p);
    EXPECT_EQ(s.code(), code) << what << ": " << s;
    EXPECT_EQ(pr.o, o0) << what;
  };
  PrefillParams p = pr.params();
  ASSERT_TRUE(BlockSparsePrefillReference(p).ok());  // the good problem runs...
  pr.o = o0;                                         // ...and the checks below start from o0
  p.num_qo_heads = 7;
  expect_bad(p, C::kInvalidArgument, "qo heads not a multiple");
  p = pr.params();
  p.kv.dtype = static_cast<DType>(9);
  expect_bad(p, C::kInvalidArgument, "dtype");
  p = pr.params();
  p.kv.head_dim = 0;
  expect_bad(p, C::kInvalidArgument, "head_dim 0");
  p = pr.params();
  p.table.num_rows = c.batch + 1;
  expect_bad(p, C::kInvalidArgument, "rows != batch");
  p = pr.params();
  p.q = nullptr;
  expect_bad(p, C::kInvalidArgument, "null q");
  p = pr.params();
  p.q_indptr = nullptr;
  expect_bad(p, C::kInvalidArgument, "null q_indptr");
  p = pr.params();
  p.kv.stride_token = 1;
  expect_bad(p, C::kInvalidArgument, "stride");
  p = pr.params();
  p.sm_scale = -1;
  expect_bad(p, C::kInvalidArgument, "scale");
  p = pr.params();
  p.sink_tokens = -1;
  expect_bad(p, C::kInvalidArgument, "negative sink");
  p = pr.params();
  p.window_tokens = -3;
  expect_bad(p, C::kInvalidArgument, "negative window");
  p = pr.params();
  p.select_pages = nullptr;
  expect_bad(p, C::kInvalidArgument, "select_indptr without select_pages");

  auto q_indptr = pr.q_indptr;
  p = pr.params();
  p.q_indptr = q_indptr.data();
  q_indptr[0] = 1;
  expect_bad(p, C::kInvalidArgument, "q_indptr[0] != 0");
  q_indptr = pr.q_indptr;
  q_indptr[1] = q_indptr[2] + 1;
  expect_bad(p, C::kInvalidArgument, "q_indptr decreasing");
  q_indptr = pr.q_indptr;
  for (int32_t b = 1; b <= c.batch; ++b) q_indptr[b] += pr.context[0] + 1;
  expect_bad(p, C::kInvalidArgument, "chunk longer than its row");

  auto indices = pr.indices;
  p = pr.params();
  p.table.indices = indices.data();
  indices[1] = pr.pool.pages;
  expect_bad(p, C::kOutOfRange, "page id past the pool");
  indices[1] = -1;
  expect_bad(p, C::kOutOfRange, "negative page id");
  auto last = pr.last;
  p = pr.params();
  p.table.last_page_len = last.data();
  last[1] = 0;
  expect_bad(p, C::kInvalidArgument, "last_page_len 0");
  last[1] = c.page_size + 1;
  expect_bad(p, C::kInvalidArgument, "last_page_len > page");
  auto indptr = pr.indptr;
  p = pr.params();
  p.table.indptr = indptr.data();
  std::swap(indptr[1], indptr[2]);
  expect_bad(p, C::kInvalidArgument, "table indptr decreasing");

  // Selections (row 1 * kv_heads of sequence 1 has >= 2 context pages to choose from).
  auto sel_indptr = pr.sel_indptr;
  auto sel_pages = pr.sel_pages;
  p = pr.params();
  p.select_indptr = sel_indptr.data();
  p.select_pages = sel_pages.data();
  sel_indptr[0] = 1;
  expect_bad(p, C::kInvalidArgument, "select_indptr[0] != 0");
  sel_indptr = pr.sel_indptr;
  sel_indptr[1] = sel_indptr[2] + 1;
  expect_bad(p, C::kInvalidArgument, "select_indptr decreasing");
  // Make row r = kv_heads (sequence 1, head 0) select pages {0, 1}, then break them.
  const int32_t r = c.kv_heads;
  sel_pages.assign(pr.sel_pages.begin(), pr.sel_pages.begin() + pr.sel_indptr[r]);
  sel_pages.insert(sel_pages.end(), {0, 1});
  const size_t at = sel_pages.size() - 2;
  sel_indptr = pr.sel_indptr;
  for (size_t i = r + 1; i < sel_indptr.size(); ++i) sel_indptr[i] = pr.sel_indptr[r] + 2;
  p.select_pages = sel_pages.data();
  ASSERT_TRUE(BlockSparsePrefillReference(p).ok()) << "the edited selection itself is valid";
  pr.o = o0;
  sel_pages[at + 1] = 0;
  expect_bad(p, C::kInvalidArgument, "a page selected twice");
  sel_pages[at] = 1;
  expect_bad(p, C::kInvalidArgument, "pages not increasing");
  sel_pages[at] = -1;
  sel_pages[at + 1] = 1;
  expect_bad(p, C::kInvalidArgument, "negative page number");
  sel_pages[at] = 0;
  sel_pages[at + 1] = (pr.context[1] + c.page_size - 1) / c.page_size;
  expect_bad(p, C::kInvalidArgument, "a page of the chunk, not of the context");
}

}  // namespace
}  // namespace pagoda::kernels
