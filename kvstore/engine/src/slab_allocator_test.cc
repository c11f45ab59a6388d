#include "slab_allocator.h"

#include <set>

#include "gtest/gtest.h"

namespace pagoda {
namespace {

TEST(SlabAllocatorTest, ClassesTakeWholeSegmentsAndSlotsDoNotOverlap) {
  SlabAllocator a(4 * 4096, 4096);     // 4 segments
  const int small = a.AddClass(1000);  // rounded to 1024: 4 per segment
  const int big = a.AddClass(4096);
  EXPECT_EQ(a.slot_bytes(small), 1024u);
  std::set<uint64_t> starts;
  for (int i = 0; i < 4; ++i) {
    auto off = a.Allocate(small);
    ASSERT_TRUE(off.has_value());
    EXPECT_EQ(*off % SlabAllocator::kSlotAlign, 0u);
    starts.insert(*off);
  }
  EXPECT_EQ(a.free_segments(), 3u);
  for (int i = 0; i < 3; ++i) {
    auto off = a.Allocate(big);
    ASSERT_TRUE(off.has_value());
    starts.insert(*off);
  }
  EXPECT_EQ(starts.size(), 7u);
  EXPECT_FALSE(a.Allocate(big).has_value());
  EXPECT_FALSE(a.Allocate(small).has_value());
  // Every slot lies inside the capacity and no two overlap.
  uint64_t end = 0;
  for (uint64_t s : starts) {
    EXPECT_GE(s, end);
    end = s + 1024;
  }
  EXPECT_LE(*starts.rbegin() + 4096, 4u * 4096);
  a.Free(small, *starts.begin());
  auto again = a.Allocate(small);
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(*again, *starts.begin());
}

TEST(SlabAllocatorTest, SlotLargerThanSegmentNeverAllocates) {
  SlabAllocator a(8192, 4096);
  const int huge = a.AddClass(8192);
  EXPECT_FALSE(a.Allocate(huge).has_value());
  EXPECT_EQ(a.free_segments(), 2u);
}

}  // namespace
}  // namespace pagoda
