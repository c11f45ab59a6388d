// The GPU tier through the store. Runs on a machine with a CUDA device; skips cleanly elsewhere
// (no CUDA in the build, or no device).
#include "gtest/gtest.h"
#include "pagoda/kvstore/store.h"
#include "test_util.h"

namespace pagoda {
namespace {

using ::pagoda::testing::PageBytesFor;
using ::pagoda::testing::SmallLayout;
using ::pagoda::testing::SmallStoreOptions;
using ::pagoda::testing::TestKey;

TEST(GpuTierTest, PrefetchToGpuReadsBackAndEvictsToHost) {
  StoreOptions o = SmallStoreOptions(16, "");
  o.gpu_capacity_bytes = 4 * SmallLayout().PageBytes();
  o.watermarks[0] = Watermarks{1.0, 1.0};
  auto opened = Store::Open(o);
  if (absl::IsUnavailable(opened.status())) {
    GTEST_SKIP() << "no GPU tier here: " << opened.status();
  }
  ASSERT_TRUE(opened.ok()) << opened.status();
  Store& s = **opened;
  ASSERT_TRUE(s.HasTier(Tier::kGpu));
  std::vector<PageKey> keys;
  for (int i = 0; i < 6; ++i) {
    keys.push_back(TestKey(i));
    auto b = PageBytesFor(SmallLayout(), "t", TestKey(i));
    ASSERT_TRUE(s.Put("t", TestKey(i), SmallLayout(), b).ok());
  }
  // Six pages into a four-page GPU pool: the first two come back down to host.
  auto moved = s.Prefetch("t", keys, Tier::kGpu);
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_EQ(*moved, 6u);
  int on_gpu = 0;
  for (int i = 0; i < 6; ++i) {
    auto info = s.Stat("t", TestKey(i));
    ASSERT_TRUE(info.ok());
    on_gpu += info->tier == Tier::kGpu;
  }
  EXPECT_EQ(on_gpu, 4);
  EXPECT_EQ(s.Stats().tiers[0].evictions, 2u);
  std::vector<uint8_t> out(SmallLayout().PageBytes());
  for (int i = 0; i < 6; ++i) {
    auto info = s.Get("t", TestKey(i), absl::MakeSpan(out));
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(out, PageBytesFor(SmallLayout(), "t", TestKey(i))) << i;
  }
  // A zero-copy lease brings a GPU page to the host arena.
  auto lease = s.AcquireRead("t", TestKey(5));
  ASSERT_TRUE(lease.ok()) << lease.status();
  const uint8_t* p = s.HostArenaInfo().base + lease->arena_offset;
  EXPECT_EQ(PageChecksum(p, lease->size), lease->checksum);
  EXPECT_TRUE(s.ReleaseRead(lease->lease_id).ok());
}

TEST(GpuTierTest, MissingDeviceIsUnavailableNotACrash) {
  StoreOptions o = SmallStoreOptions(4, "");
  o.gpu_capacity_bytes = 1 << 20;
  o.gpu_device = 1000;  // no machine has this many
  auto opened = Store::Open(o);
  EXPECT_TRUE(absl::IsUnavailable(opened.status())) << opened.status();
}

TEST(GpuTierTest, MappingTheHostTierForAMissingDeviceChangesNothing) {
  auto opened = Store::Open(SmallStoreOptions(8, ""));
  ASSERT_TRUE(opened.ok()) << opened.status();
  Store& s = **opened;
  ASSERT_TRUE(
      s.Put("t", TestKey(1), SmallLayout(), PageBytesFor(SmallLayout(), "t", TestKey(1))).ok());
  EXPECT_TRUE(absl::IsUnavailable(s.MapHostTierForGpu(1000))) << s.MapHostTierForGpu(1000);
  EXPECT_TRUE(absl::IsInvalidArgument(s.MapHostTierForGpu(-1)));
  EXPECT_EQ(s.HostArenaInfo().gpu_device, -1);
  // Host segments are still handed out as before.
  for (int i = 2; i < 8; ++i) {
    ASSERT_TRUE(
        s.Put("u", TestKey(i), SmallLayout(), PageBytesFor(SmallLayout(), "u", TestKey(i))).ok());
  }
  std::vector<uint8_t> out(SmallLayout().PageBytes());
  ASSERT_TRUE(s.Get("t", TestKey(1), absl::MakeSpan(out)).ok());
  EXPECT_EQ(out, PageBytesFor(SmallLayout(), "t", TestKey(1)));
}

TEST(GpuTierTest, MappedHostTierPinsSegmentsBeforeAndAfter) {
  auto opened = Store::Open(SmallStoreOptions(16, ""));
  ASSERT_TRUE(opened.ok()) << opened.status();
  Store& s = **opened;
  ASSERT_TRUE(
      s.Put("t", TestKey(1), SmallLayout(), PageBytesFor(SmallLayout(), "t", TestKey(1))).ok());
  absl::Status mapped = s.MapHostTierForGpu(0);
  if (absl::IsUnavailable(mapped)) GTEST_SKIP() << "no GPU here: " << mapped;
  ASSERT_TRUE(mapped.ok()) << mapped;
  EXPECT_EQ(s.HostArenaInfo().gpu_device, 0);
  EXPECT_TRUE(s.MapHostTierForGpu(0).ok());  // idempotent
  EXPECT_TRUE(absl::IsFailedPrecondition(s.MapHostTierForGpu(1)));
  // Segments assigned afterwards (another tenant: its own segments) are pinned too; the pages
  // read back exactly.
  for (int i = 2; i < 10; ++i) {
    ASSERT_TRUE(
        s.Put("u", TestKey(i), SmallLayout(), PageBytesFor(SmallLayout(), "u", TestKey(i))).ok());
  }
  std::vector<uint8_t> out(SmallLayout().PageBytes());
  for (int i = 2; i < 10; ++i) {
    ASSERT_TRUE(s.Get("u", TestKey(i), absl::MakeSpan(out)).ok());
    EXPECT_EQ(out, PageBytesFor(SmallLayout(), "u", TestKey(i)));
  }
}

}  // namespace
}  // namespace pagoda
