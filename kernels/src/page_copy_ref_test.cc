#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "pagoda/kernels/reference.h"

namespace pagoda::kernels {
namespace {

std::vector<uint8_t> RandomBytes(std::mt19937& rng, size_t n) {
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

TEST(PageCopyRef, GatherThenScatterRoundTripsAndTouchesNothingElse) {
  std::mt19937 rng(1);
  for (int64_t page_bytes : {1, 100, 4096}) {
    const int64_t stride = page_bytes + 13, slots = 37;
    std::vector<uint8_t> pool = RandomBytes(rng, stride * slots);
    const std::vector<uint8_t> pool0 = pool;
    std::vector<int32_t> ids(slots);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    ids.resize(17);
    std::vector<uint8_t> staging(ids.size() * page_bytes, 0xAB);
    PageCopyParams p{pool.data(), slots, stride, page_bytes, ids.data(), 17, staging.data()};
    ASSERT_TRUE(GatherPagesReference(p).ok());
    for (size_t i = 0; i < ids.size(); ++i) {
      ASSERT_TRUE(std::equal(staging.begin() + i * page_bytes,
                             staging.begin() + (i + 1) * page_bytes,
                             pool.begin() + ids[i] * stride));
    }
    // Scatter new bytes back; listed slots change, everything else (gaps, other slots) stays.
    const std::vector<uint8_t> fresh = RandomBytes(rng, staging.size());
    std::copy(fresh.begin(), fresh.end(), staging.begin());  // p.staging stays valid
    ASSERT_TRUE(ScatterPagesReference(p).ok());
    std::vector<uint8_t> want = pool0;
    for (size_t i = 0; i < ids.size(); ++i) {
      std::copy_n(staging.begin() + i * page_bytes, page_bytes, want.begin() + ids[i] * stride);
    }
    EXPECT_EQ(pool, want);
  }
}

TEST(PageCopyRefBadInput, RejectedWithoutWriting) {
  std::vector<uint8_t> pool(10 * 64, 1), staging(3 * 64, 2);
  const auto pool0 = pool;
  const auto staging0 = staging;
  std::vector<int32_t> ids = {1, 4, 1};
  PageCopyParams p{pool.data(), 10, 64, 64, ids.data(), 3, staging.data()};
  EXPECT_EQ(ScatterPagesReference(p).code(), absl::StatusCode::kInvalidArgument) << "duplicate";
  ids = {1, 4, 10};
  EXPECT_EQ(ScatterPagesReference(p).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(GatherPagesReference(p).code(), absl::StatusCode::kOutOfRange);
  ids = {1, 4, 5};
  p.pool_stride_bytes = 32;
  EXPECT_FALSE(GatherPagesReference(p).ok()) << "stride below page size";
  p.pool_stride_bytes = 64;
  p.staging = nullptr;
  EXPECT_FALSE(ScatterPagesReference(p).ok());
  EXPECT_EQ(pool, pool0);
  EXPECT_EQ(staging, staging0);
}

// A TokenRowsParams of n random rows (distinct destinations) over a pool of `rows` rows.
TokenRowsParams RandomTokenRows(std::mt19937& rng, int32_t n, int64_t rows, int64_t row_bytes,
                                uint8_t* pool, const uint8_t* k, const uint8_t* v) {
  std::vector<int32_t> ids(rows);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  TokenRowsParams p;
  p.pool = pool;
  p.pool_rows = rows;
  p.row_bytes = row_bytes;
  p.k = k;
  p.v = v;
  p.num_rows = n;
  for (int32_t i = 0; i < n; ++i) {
    p.k_rows[i] = ids[2 * i];
    p.v_rows[i] = ids[2 * i + 1];
  }
  return p;
}

TEST(TokenRowsRef, WritesEachRowToItsPlaceAndTouchesNothingElse) {
  std::mt19937 rng(3);
  for (int32_t n : {1, 37, kMaxTokenRows}) {
    const int64_t row_bytes = 256, rows = 300;
    std::vector<uint8_t> pool = RandomBytes(rng, rows * row_bytes);
    const std::vector<uint8_t> k = RandomBytes(rng, n * row_bytes),
                               v = RandomBytes(rng, n * row_bytes);
    std::vector<uint8_t> want = pool;
    const TokenRowsParams p =
        RandomTokenRows(rng, n, rows, row_bytes, pool.data(), k.data(), v.data());
    for (int32_t i = 0; i < n; ++i) {
      std::copy(k.begin() + i * row_bytes, k.begin() + (i + 1) * row_bytes,
                want.begin() + p.k_rows[i] * row_bytes);
      std::copy(v.begin() + i * row_bytes, v.begin() + (i + 1) * row_bytes,
                want.begin() + p.v_rows[i] * row_bytes);
    }
    ASSERT_TRUE(WriteTokenRowsReference(p).ok());
    EXPECT_EQ(pool, want) << n;
  }
}

// Row ids from an array (any number of rows: a captured launch's ids live in memory) and sources
// whose tokens are further apart than their heads' rows (k and v sliced from a fused projection).
TEST(TokenRowsRef, RowIdArraysAndStridedTokensLandLikeInlineIds) {
  std::mt19937 rng(5);
  const int64_t row_bytes = 64, rows = 2000, heads = 4, tokens = 100;  // 400 rows > kMaxTokenRows
  const int64_t token_bytes = 3 * heads * row_bytes;                   // q, k, v of each token
  const std::vector<uint8_t> fused = RandomBytes(rng, tokens * token_bytes);
  std::vector<int32_t> ids(rows);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  const int32_t n = static_cast<int32_t>(tokens * heads);
  std::vector<int32_t> dst(ids.begin(), ids.begin() + 2 * n);  // k's rows, then v's
  std::vector<uint8_t> pool = RandomBytes(rng, rows * row_bytes), want = pool;
  for (int32_t i = 0; i < n; ++i) {
    const int64_t t = i / heads, h = i % heads;
    const uint8_t* k = fused.data() + t * token_bytes + (heads + h) * row_bytes;
    const uint8_t* v = fused.data() + t * token_bytes + (2 * heads + h) * row_bytes;
    std::copy(k, k + row_bytes, want.begin() + dst[i] * row_bytes);
    std::copy(v, v + row_bytes, want.begin() + dst[n + i] * row_bytes);
  }
  TokenRowsParams p;
  p.pool = pool.data();
  p.pool_rows = rows;
  p.row_bytes = row_bytes;
  p.k = fused.data() + heads * row_bytes;
  p.v = fused.data() + 2 * heads * row_bytes;
  p.num_rows = n;
  p.rows = dst.data();
  p.heads_per_token = static_cast<int32_t>(heads);
  p.k_token_bytes = p.v_token_bytes = token_bytes;
  TokenRowsParams bad = p;
  bad.heads_per_token = 3;  // does not divide the rows
  EXPECT_EQ(WriteTokenRowsReference(bad).code(), absl::StatusCode::kInvalidArgument);
  bad = p;
  bad.k_token_bytes = heads * row_bytes - 1;  // tokens overlapping
  EXPECT_EQ(WriteTokenRowsReference(bad).code(), absl::StatusCode::kInvalidArgument);
  bad = p;
  bad.rows = nullptr;  // inline ids hold at most kMaxTokenRows
  EXPECT_EQ(WriteTokenRowsReference(bad).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(WriteTokenRowsReference(p).ok());
  EXPECT_EQ(pool, want);
}

TEST(TokenRowsRef, RejectsBadRowsAndWritesNothing) {
  std::mt19937 rng(4);
  const int64_t row_bytes = 16, rows = 64;
  std::vector<uint8_t> pool = RandomBytes(rng, rows * row_bytes);
  const std::vector<uint8_t> pool0 = pool;
  const std::vector<uint8_t> k = RandomBytes(rng, 8 * row_bytes),
                             v = RandomBytes(rng, 8 * row_bytes);
  const TokenRowsParams good =
      RandomTokenRows(rng, 8, rows, row_bytes, pool.data(), k.data(), v.data());
  std::vector<TokenRowsParams> bad(7, good);
  bad[0].k_rows[3] = static_cast<int32_t>(rows);  // out of range
  bad[1].v_rows[0] = -1;
  bad[2].v_rows[5] = bad[2].k_rows[2];  // a K and a V row onto one pool row
  bad[3].k_rows[1] = bad[3].k_rows[0];  // two K rows onto one
  bad[4].num_rows = kMaxTokenRows + 1;
  bad[5].v = nullptr;
  bad[6].row_bytes = 0;
  for (size_t i = 0; i < bad.size(); ++i) {
    EXPECT_EQ(WriteTokenRowsReference(bad[i]).code(),
              i < 2 ? absl::StatusCode::kOutOfRange : absl::StatusCode::kInvalidArgument)
        << i;
    EXPECT_EQ(pool, pool0) << i;
  }
  TokenRowsParams none = good;
  none.num_rows = 0;
  EXPECT_TRUE(WriteTokenRowsReference(none).ok());
  EXPECT_EQ(pool, pool0);
}

}  // namespace
}  // namespace pagoda::kernels
