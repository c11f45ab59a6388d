// Verified head-page gather: copies, checksum verdicts and the input checks.
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "pagoda/kernels/head_checksum.h"
#include "pagoda/kernels/reference.h"

namespace pagoda::kernels {
namespace {

constexpr int64_t kHalf = 4 * 16 * 2;  // 4 tokens x 16 dims x 2 bytes
constexpr int32_t kHeads = 2, kSlots = 3;

struct Fixture {
  std::vector<uint8_t> src = std::vector<uint8_t>(8 * kHalf);
  std::vector<uint8_t> pool = std::vector<uint8_t>(kHeads * kSlots * 2 * kHalf, 0xee);
  std::vector<int64_t> k{0, 2 * kHalf}, v{kHalf, 3 * kHalf};
  std::vector<int32_t> head{0, 1}, slot{2, 2};
  std::vector<uint64_t> expected;
  std::vector<uint8_t> bad = std::vector<uint8_t>(2, 7);
  Fixture() {
    std::mt19937 rng(3);
    for (auto& b : src) b = static_cast<uint8_t>(rng());
    for (size_t i = 0; i < k.size(); ++i) {
      expected.push_back(HeadPageChecksum(&src[k[i]], &src[v[i]], kHalf));
    }
  }
  HeadGatherParams Params() {
    HeadGatherParams p;
    p.src = src.data();
    p.src_bytes = static_cast<int64_t>(src.size());
    p.pool = pool.data();
    p.num_kv_heads = kHeads;
    p.pool_slots = kSlots;
    p.half_bytes = kHalf;
    p.num_copies = static_cast<int32_t>(k.size());
    p.src_k = k.data();
    p.src_v = v.data();
    p.dst_head = head.data();
    p.dst_slot = slot.data();
    p.expected = expected.data();
    p.bad = bad.data();
    return p;
  }
  const uint8_t* Slot(int h, int s) const { return &pool[(h * kSlots + s) * 2 * kHalf]; }
};

TEST(HeadChecksum, DetectsFlipsZeroingAndSwaps) {
  std::vector<uint8_t> k(kHalf), v(kHalf);
  std::mt19937 rng(5);
  for (auto& b : k) b = static_cast<uint8_t>(rng());
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  const uint64_t base = HeadPageChecksum(k.data(), v.data(), kHalf);
  for (int64_t bit = 0; bit < kHalf * 8; bit += 37) {
    k[bit / 8] ^= 1u << (bit % 8);
    EXPECT_NE(HeadPageChecksum(k.data(), v.data(), kHalf), base) << bit;
    k[bit / 8] ^= 1u << (bit % 8);
  }
  EXPECT_NE(HeadPageChecksum(v.data(), k.data(), kHalf), base);  // K and V swapped
  std::vector<uint8_t> swapped = k;
  std::memcpy(swapped.data(), k.data() + 8, 8);
  std::memcpy(swapped.data() + 8, k.data(), 8);
  EXPECT_NE(HeadPageChecksum(swapped.data(), v.data(), kHalf), base);
  std::vector<uint8_t> zero(kHalf, 0);
  EXPECT_NE(HeadPageChecksum(zero.data(), v.data(), kHalf), base);
}

TEST(GatherHeadPages, CopiesIntoHeadSubPoolsAndVerifies) {
  Fixture f;
  ASSERT_TRUE(GatherHeadPagesReference(f.Params()).ok());
  EXPECT_EQ(f.bad, (std::vector<uint8_t>{0, 0}));
  EXPECT_EQ(std::memcmp(f.Slot(0, 2), &f.src[0], kHalf), 0);
  EXPECT_EQ(std::memcmp(f.Slot(0, 2) + kHalf, &f.src[kHalf], kHalf), 0);
  EXPECT_EQ(std::memcmp(f.Slot(1, 2), &f.src[2 * kHalf], kHalf), 0);
  EXPECT_EQ(std::memcmp(f.Slot(1, 2) + kHalf, &f.src[3 * kHalf], kHalf), 0);
  EXPECT_EQ(f.Slot(0, 0)[0], 0xee);  // untouched slots stay as they were
}

TEST(GatherHeadPages, FlagsACorruptSource) {
  Fixture f;
  f.src[2 * kHalf + 5] ^= 0x10;  // copy 1's K after its checksum was taken
  ASSERT_TRUE(GatherHeadPagesReference(f.Params()).ok());
  EXPECT_EQ(f.bad, (std::vector<uint8_t>{0, 1}));
}

TEST(GatherHeadPages, BadInputWritesNothing) {
  auto expect_rejected = [](Fixture& f) {
    const std::vector<uint8_t> pool = f.pool;
    EXPECT_FALSE(GatherHeadPagesReference(f.Params()).ok());
    EXPECT_EQ(f.pool, pool);
    EXPECT_EQ(f.bad, (std::vector<uint8_t>{7, 7}));
  };
  {
    Fixture f;
    f.k[1] = static_cast<int64_t>(f.src.size()) - kHalf + 1;  // past the source
    expect_rejected(f);
  }
  {
    Fixture f;
    f.v[0] = -16;
    expect_rejected(f);
  }
  {
    Fixture f;
    f.slot[1] = kSlots;
    expect_rejected(f);
  }
  {
    Fixture f;
    f.head[1] = 0;  // (0, 2) twice
    expect_rejected(f);
  }
  {
    Fixture f;
    HeadGatherParams p = f.Params();
    p.half_bytes = 20;  // not a multiple of 16
    EXPECT_EQ(GatherHeadPagesReference(p).code(), absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace pagoda::kernels
