#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "pagoda/kernels/pool_copy.h"

namespace pagoda::kernels {
namespace {

std::vector<uint8_t> RandomBytes(std::mt19937& rng, size_t n) {
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

TEST(PoolCopyRef, CopiesListedSlotsAndTouchesNothingElse) {
  std::mt19937 rng(3);
  for (int64_t page_bytes : {1, 100, 4096}) {
    const int64_t src_stride = page_bytes + 7, dst_stride = page_bytes + 29;
    const int64_t src_slots = 41, dst_slots = 23;
    const std::vector<uint8_t> src = RandomBytes(rng, src_stride * src_slots);
    std::vector<uint8_t> dst = RandomBytes(rng, dst_stride * dst_slots);
    std::vector<int32_t> from(src_slots), to(dst_slots);
    std::iota(from.begin(), from.end(), 0);
    std::iota(to.begin(), to.end(), 0);
    std::shuffle(from.begin(), from.end(), rng);
    std::shuffle(to.begin(), to.end(), rng);
    from.resize(15);
    to.resize(15);
    from[3] = from[9];  // a source slot read twice is fine
    std::vector<uint8_t> want = dst;
    for (size_t i = 0; i < from.size(); ++i) {
      std::copy_n(src.begin() + from[i] * src_stride, page_bytes,
                  want.begin() + to[i] * dst_stride);
    }
    PoolToPoolParams p{src.data(), src_slots,  src_stride,  dst.data(), dst_slots,
                       dst_stride, page_bytes, from.data(), to.data(),  15};
    ASSERT_TRUE(CopyPoolToPoolReference(p).ok());
    EXPECT_EQ(dst, want) << page_bytes;
  }
}

TEST(PoolCopyRef, DisjointSlotsOfOnePoolCopy) {
  std::mt19937 rng(4);
  std::vector<uint8_t> pool = RandomBytes(rng, 10 * 64);
  std::vector<int32_t> from = {0, 1, 2}, to = {7, 8, 9};
  std::vector<uint8_t> want = pool;
  for (int i = 0; i < 3; ++i)
    std::copy_n(pool.begin() + from[i] * 64, 64, want.begin() + to[i] * 64);
  PoolToPoolParams p{pool.data(), 10, 64, pool.data(), 10, 64, 64, from.data(), to.data(), 3};
  ASSERT_TRUE(CopyPoolToPoolReference(p).ok());
  EXPECT_EQ(pool, want);
}

TEST(PoolCopyRefBadInput, RejectedWithoutWriting) {
  std::vector<uint8_t> src(10 * 64, 1), dst(10 * 64, 2);
  const auto dst0 = dst;
  std::vector<int32_t> from = {1, 2, 3}, to = {4, 5, 4};
  PoolToPoolParams p{src.data(), 10, 64, dst.data(), 10, 64, 64, from.data(), to.data(), 3};
  EXPECT_EQ(CopyPoolToPoolReference(p).code(), absl::StatusCode::kInvalidArgument) << "dup dst";
  to = {4, 5, 10};
  EXPECT_EQ(CopyPoolToPoolReference(p).code(), absl::StatusCode::kOutOfRange) << "dst range";
  to = {4, 5, 6};
  from = {-1, 2, 3};
  EXPECT_EQ(CopyPoolToPoolReference(p).code(), absl::StatusCode::kOutOfRange) << "src range";
  from = {1, 2, 3};
  p.dst_stride_bytes = 32;
  EXPECT_EQ(CopyPoolToPoolReference(p).code(), absl::StatusCode::kInvalidArgument) << "stride";
  p.dst_stride_bytes = 64;
  p.page_bytes = 0;
  EXPECT_EQ(CopyPoolToPoolReference(p).code(), absl::StatusCode::kInvalidArgument) << "size";
  p.page_bytes = 64;
  p.src_pages = nullptr;
  EXPECT_EQ(CopyPoolToPoolReference(p).code(), absl::StatusCode::kInvalidArgument) << "null";
  p.src_pages = from.data();
  p.num_pages = -1;
  EXPECT_EQ(CopyPoolToPoolReference(p).code(), absl::StatusCode::kInvalidArgument) << "count";
  EXPECT_EQ(dst, dst0);
  // Overlap inside one pool: slot 3 both read and written; and a half-slot overlap through an
  // offset view of the same memory.
  p.num_pages = 3;
  p.dst = src.data();
  const auto src0 = src;
  to = {3, 7, 8};
  EXPECT_EQ(CopyPoolToPoolReference(p).code(), absl::StatusCode::kInvalidArgument) << "overlap";
  p.dst = src.data() + 32;
  p.dst_slots = 9;
  to = {0, 5, 6};  // dst slot 0 = bytes [32, 96): overlaps source slot 1 = [64, 128)
  EXPECT_EQ(CopyPoolToPoolReference(p).code(), absl::StatusCode::kInvalidArgument) << "offset";
  EXPECT_EQ(src, src0);
  p.num_pages = 0;
  EXPECT_TRUE(CopyPoolToPoolReference(p).ok()) << "nothing to copy is not an error";
}

}  // namespace
}  // namespace pagoda::kernels
