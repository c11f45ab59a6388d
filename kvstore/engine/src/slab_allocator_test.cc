#include "slab_allocator.h"

#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace pagoda {
namespace {

// Hooks that log "assign S to O" / "release S from O" (S: segment index) into `events`.
SlabAllocator::SegmentHooks Recording(std::vector<std::string>& events) {
  SlabAllocator::SegmentHooks hooks;
  hooks.assign = [&events](uint64_t off, uint64_t bytes, uint32_t owner) {
    events.push_back("assign " + std::to_string(off / bytes) + " to " + std::to_string(owner));
    return absl::OkStatus();
  };
  hooks.release = [&events](uint64_t off, uint64_t bytes, uint32_t owner) {
    events.push_back("release " + std::to_string(off / bytes) + " from " + std::to_string(owner));
  };
  return hooks;
}

TEST(SlabAllocatorTest, ClassesTakeWholeSegmentsAndSlotsDoNotOverlap) {
  SlabAllocator a(4 * 4096, 4096);        // 4 segments
  const int small = a.ClassFor(0, 1000);  // rounded to 1024: 4 per segment
  const int big = a.ClassFor(0, 4096);
  EXPECT_EQ(a.ClassFor(0, 1024), small);  // same owner, same slot size: same class
  EXPECT_EQ(a.slot_bytes(small), 1024u);
  std::set<uint64_t> starts;
  for (int i = 0; i < 4; ++i) {
    auto off = a.Allocate(small);
    ASSERT_TRUE(off.ok());
    EXPECT_EQ(*off % SlabAllocator::kSlotAlign, 0u);
    starts.insert(*off);
  }
  EXPECT_EQ(a.free_segments(), 3u);
  for (int i = 0; i < 3; ++i) {
    auto off = a.Allocate(big);
    ASSERT_TRUE(off.ok());
    starts.insert(*off);
  }
  EXPECT_EQ(starts.size(), 7u);
  EXPECT_TRUE(absl::IsResourceExhausted(a.Allocate(big).status()));
  EXPECT_TRUE(absl::IsResourceExhausted(a.Allocate(small).status()));
  // Every slot lies inside the capacity and no two overlap.
  uint64_t end = 0;
  for (uint64_t s : starts) {
    EXPECT_GE(s, end);
    end = s + 1024;
  }
  EXPECT_LE(*starts.rbegin() + 4096, 4u * 4096);
  a.Free(*starts.begin());
  auto again = a.Allocate(small);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *starts.begin());
}

TEST(SlabAllocatorTest, SlotLargerThanSegmentNeverAllocates) {
  SlabAllocator a(8192, 4096);
  const int huge = a.ClassFor(0, 8192);
  EXPECT_FALSE(a.Allocate(huge).ok());
  EXPECT_EQ(a.free_segments(), 2u);
}

// Segments hold one owner's slots; an emptied segment moves to another owner only when no free
// segment is left, and the hooks see every change of owner.
TEST(SlabAllocatorTest, SegmentsBelongToOneOwnerAndMoveWhenEmpty) {
  std::vector<std::string> events;
  const SlabAllocator::SegmentHooks hooks = Recording(events);
  SlabAllocator a(2 * 4096, 4096, hooks);  // 2 segments of 4 slots
  const int a1 = a.ClassFor(1, 1024);
  const int b2 = a.ClassFor(2, 1024);
  ASSERT_NE(a1, b2);
  auto x = a.Allocate(a1);
  auto y = a.Allocate(b2);
  ASSERT_TRUE(x.ok() && y.ok());
  EXPECT_NE(a.SegmentOf(*x), a.SegmentOf(*y));
  EXPECT_EQ(a.ClassOf(*x), a1);
  EXPECT_EQ(a.ClassOf(*y), b2);
  EXPECT_EQ(a.SegmentUsed(a.SegmentOf(*x)), 1u);
  // Owner 2 fills its segment; a fifth slot finds no segment (owner 1 holds the other).
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(a.Allocate(b2).ok());
  EXPECT_TRUE(absl::IsResourceExhausted(a.Allocate(b2).status()));
  // Owner 1's segment empties: it stays owner 1's until owner 2 needs it.
  a.Free(*x);
  EXPECT_EQ(a.ClassOf(*x), a1);
  auto z = a.Allocate(b2);
  ASSERT_TRUE(z.ok());
  EXPECT_EQ(a.SegmentOf(*z), a.SegmentOf(*x));
  EXPECT_EQ(a.ClassOf(*z), b2);
  EXPECT_EQ(events, (std::vector<std::string>{"assign 0 to 1", "assign 1 to 2", "release 0 from 1",
                                              "assign 0 to 2"}));
}

// may_reclaim keeps an empty segment with its owner: the Allocate that needed it is Unavailable
// and nothing moved; once it says yes, the segment moves as before.
TEST(SlabAllocatorTest, AnEmptySegmentStaysWhileReclaimIsRefused) {
  std::vector<std::string> events;
  SlabAllocator::SegmentHooks hooks = Recording(events);
  bool may = false;
  hooks.may_reclaim = [&may] { return may; };
  SlabAllocator a(2 * 4096, 4096, hooks);
  const int a1 = a.ClassFor(1, 4096), b2 = a.ClassFor(2, 4096);  // one slot per segment
  auto x = a.Allocate(a1);
  ASSERT_TRUE(x.ok() && a.Allocate(b2).ok());
  a.Free(*x);
  EXPECT_TRUE(absl::IsUnavailable(a.Allocate(b2).status()));
  EXPECT_EQ(a.ClassOf(*x), a1);
  may = true;
  auto z = a.Allocate(b2);
  ASSERT_TRUE(z.ok()) << z.status();
  EXPECT_EQ(a.SegmentOf(*z), a.SegmentOf(*x));
  EXPECT_EQ(events, (std::vector<std::string>{"assign 0 to 1", "assign 1 to 2", "release 0 from 1",
                                              "assign 0 to 2"}));
}

TEST(SlabAllocatorTest, FailedAssignLeavesTheSegmentFree) {
  SlabAllocator::SegmentHooks hooks;
  hooks.assign = [](uint64_t, uint64_t, uint32_t) { return absl::UnavailableError("no memory"); };
  SlabAllocator a(4096, 4096, hooks);
  auto off = a.Allocate(a.ClassFor(7, 512));
  EXPECT_TRUE(absl::IsInternal(off.status())) << off.status();
  EXPECT_EQ(a.free_segments(), 1u);
}

// Prepare assigns free segments ahead of demand: the hook runs then, the class's next Allocate
// does not call it, and a prepared segment that stays empty still moves to another owner.
TEST(SlabAllocatorTest, PreparedSegmentsAreAssignedAheadAndStillMove) {
  std::vector<std::string> events;
  const SlabAllocator::SegmentHooks hooks = Recording(events);
  SlabAllocator a(2 * 4096, 4096, hooks);  // 2 segments of 4 slots
  const int a1 = a.ClassFor(1, 1024);
  const int b2 = a.ClassFor(2, 1024);
  ASSERT_EQ(*a.Prepare(a1), true);
  ASSERT_EQ(*a.Prepare(a1), true);
  EXPECT_EQ(*a.Prepare(a1), false);  // nothing free: held segments are never taken here
  EXPECT_EQ(a.free_segments(), 0u);
  EXPECT_EQ(events.size(), 2u);
  auto x = a.Allocate(a1);  // no hook: the segment is owner 1's already
  ASSERT_TRUE(x.ok());
  EXPECT_EQ(events.size(), 2u);
  auto y = a.Allocate(b2);  // owner 1's empty prepared segment moves to owner 2
  ASSERT_TRUE(y.ok());
  EXPECT_NE(a.SegmentOf(*x), a.SegmentOf(*y));
  EXPECT_EQ(a.ClassOf(*y), b2);
  EXPECT_EQ(events.size(), 4u);
  EXPECT_EQ(events[2].rfind("release", 0), 0u);
  EXPECT_EQ(events[3].substr(events[3].size() - 4), "to 2");
  // A failing hook leaves the segment free.
  SlabAllocator::SegmentHooks bad;
  bad.assign = [](uint64_t, uint64_t, uint32_t) { return absl::UnavailableError("no memory"); };
  SlabAllocator c(4096, 4096, bad);
  EXPECT_TRUE(absl::IsInternal(c.Prepare(c.ClassFor(3, 512)).status()));
  EXPECT_EQ(c.free_segments(), 1u);
}

}  // namespace
}  // namespace pagoda
