// The attention pool's slot bookkeeping: LRU eviction, owned slots, adoption, epochs.
#include "head_pool.h"

#include "gtest/gtest.h"

namespace pagoda::worker_internal {
namespace {

PageKey Key(uint64_t i) { return PageKey{i, i * 3}; }

TEST(HeadPool, EvictsLeastRecentlyUsedButNothingUsedThisEpoch) {
  HeadPool pool(2, 3);
  EXPECT_GE(pool.Insert(Key(1), 0, 1), 0);
  EXPECT_GE(pool.Insert(Key(2), 0, 1), 0);
  EXPECT_GE(pool.Insert(Key(3), 0, 1), 0);
  EXPECT_EQ(pool.Insert(Key(4), 0, 1), -1);  // all used in epoch 1
  EXPECT_GE(pool.Find(Key(1), 0, 2), 0);     // key 1 is now the most recent
  const int32_t s = pool.Insert(Key(4), 0, 2);
  EXPECT_GE(s, 0);
  EXPECT_EQ(pool.Find(Key(2), 0, 2), -1);  // the victim
  EXPECT_GE(pool.Find(Key(1), 0, 2), 0);
  EXPECT_EQ(pool.Find(Key(1), 1, 2), -1);  // heads are separate sub-pools
  EXPECT_EQ(pool.evictions(), 1);
}

TEST(HeadPool, OwnedSlotsAreNeverEvictedAndAdoptionDeduplicates) {
  HeadPool pool(1, 2);
  const int32_t owned = pool.AllocOwned(0, 1);
  ASSERT_GE(owned, 0);
  EXPECT_EQ(pool.Available(0), 1);
  ASSERT_GE(pool.Insert(Key(1), 0, 1), 0);
  const int32_t two = pool.Insert(Key(2), 0, 2);  // evicts key 1, not the owned slot
  ASSERT_GE(two, 0);
  EXPECT_NE(two, owned);
  EXPECT_EQ(pool.Find(Key(2), 0, 2), two);
  EXPECT_EQ(pool.Find(Key(1), 0, 3), -1);
  // Key 2 is cached already, so adopting the owned slot as its copy frees the owned slot.
  const int32_t kept = pool.Adopt(0, owned, Key(2), 3);
  EXPECT_NE(kept, owned);
  EXPECT_EQ(pool.Available(0), 2);
  EXPECT_EQ(pool.used(), 1);
  // Adopting a new key keeps the slot.
  const int32_t o2 = pool.AllocOwned(0, 4);
  ASSERT_GE(o2, 0);
  EXPECT_EQ(pool.Adopt(0, o2, Key(9), 4), o2);
  EXPECT_EQ(pool.Find(Key(9), 0, 5), o2);
  pool.Forget(Key(9), 0);
  EXPECT_EQ(pool.Find(Key(9), 0, 5), -1);
  EXPECT_EQ(pool.used(), 1);
}

}  // namespace
}  // namespace pagoda::worker_internal
