// The cudaMalloc'd GPU tier on its own (no store, no RocksDB): byte-exact round trips at slot
// offsets, and clean errors. Skips on a machine without a CUDA device.
#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "memory_tier.h"

namespace pagoda {
namespace {

TEST(GpuTierRawTest, RoundTripsBytesAtOffsets) {
  constexpr uint64_t kCap = 4 << 20;
  auto tier = CreateGpuTier(kCap, 0);
  if (absl::IsUnavailable(tier.status())) GTEST_SKIP() << tier.status();
  ASSERT_TRUE(tier.ok()) << tier.status();
  MemoryTier& t = **tier;
  EXPECT_EQ(t.tier(), Tier::kGpu);
  EXPECT_EQ(t.capacity_bytes(), kCap);
  EXPECT_EQ(t.host_base(), nullptr);
  std::vector<uint8_t> a(65536), b(65536), out(65536);
  for (size_t i = 0; i < a.size(); ++i) {
    a[i] = static_cast<uint8_t>(i * 31 + 7);
    b[i] = static_cast<uint8_t>(i * 17 + 3);
  }
  ASSERT_TRUE(t.Write(0, a.data(), a.size()).ok());
  ASSERT_TRUE(t.Write(kCap - b.size(), b.data(), b.size()).ok());
  ASSERT_TRUE(t.Read(0, out.data(), out.size()).ok());
  EXPECT_EQ(out, a);
  ASSERT_TRUE(t.Read(kCap - b.size(), out.data(), out.size()).ok());
  EXPECT_EQ(out, b);
  // Overwrite part of a slot and read across the boundary.
  ASSERT_TRUE(t.Write(100, b.data(), 1000).ok());
  ASSERT_TRUE(t.Read(0, out.data(), out.size()).ok());
  EXPECT_EQ(std::memcmp(out.data(), a.data(), 100), 0);
  EXPECT_EQ(std::memcmp(out.data() + 100, b.data(), 1000), 0);
  EXPECT_EQ(std::memcmp(out.data() + 1100, a.data() + 1100, out.size() - 1100), 0);
}

TEST(GpuTierRawTest, BadRequestsGetClearErrors) {
  EXPECT_TRUE(absl::IsInvalidArgument(CreateGpuTier(0, 0).status()));
  EXPECT_TRUE(absl::IsUnavailable(CreateGpuTier(1 << 20, 1000).status()));
  EXPECT_TRUE(absl::IsUnavailable(CreateGpuTier(1 << 20, -1).status()));
}

}  // namespace
}  // namespace pagoda
