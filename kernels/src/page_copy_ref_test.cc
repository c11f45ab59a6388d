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

}  // namespace
}  // namespace pagoda::kernels
