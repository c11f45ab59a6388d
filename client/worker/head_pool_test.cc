// The attention pool's slot bookkeeping: CLOCK eviction, owned slots, adoption, epochs.
#include "head_pool.h"

#include "gtest/gtest.h"

namespace pagoda::worker_internal {
namespace {

PageKey Key(uint64_t i) { return PageKey{i, i * 3}; }

TEST(HeadPool, EvictsWhatWasNotUsedSinceButNothingUsedThisEpoch) {
  HeadPool pool(2, 3);
  EXPECT_GE(pool.Insert(Key(1), 0, 1), 0);
  EXPECT_GE(pool.Insert(Key(2), 0, 1), 0);
  EXPECT_GE(pool.Insert(Key(3), 0, 1), 0);
  EXPECT_EQ(pool.Insert(Key(4), 0, 1), -1);  // all used in epoch 1
  EXPECT_GE(pool.Find(Key(1), 0, 2), 0);     // key 1 is used again
  const int32_t s = pool.Insert(Key(4), 0, 2);
  EXPECT_GE(s, 0);
  EXPECT_EQ(pool.Find(Key(2), 0, 2), -1);  // the victim
  EXPECT_GE(pool.Find(Key(1), 0, 2), 0);
  EXPECT_EQ(pool.Find(Key(1), 1, 2), -1);  // heads are separate sub-pools
  EXPECT_EQ(pool.evictions(), 1);
}

TEST(HeadPool, AUsedSlotOutlivesAnUnusedOneByOneTurnOfTheClock) {
  HeadPool pool(1, 3);
  for (uint64_t k = 1; k <= 3; ++k) ASSERT_GE(pool.Insert(Key(k), 0, 1), 0);
  const int32_t one = pool.Find(Key(1), 0, 2);  // key 1 used at epoch 2
  ASSERT_GE(one, 0);
  const uint32_t gen = pool.Generation(0, one);
  ASSERT_GE(pool.Insert(Key(4), 0, 3), 0);
  EXPECT_EQ(pool.Find(Key(2), 0, 3), -1) << "the unused key goes first";
  EXPECT_GE(pool.Find(Key(1), 0, 3), 0);
  ASSERT_GE(pool.Insert(Key(5), 0, 4), 0);
  EXPECT_EQ(pool.Find(Key(3), 0, 4), -1);
  EXPECT_EQ(pool.Touch(0, one, gen, 4), one) << "key 1's residency is the one remembered";
  ASSERT_GE(pool.Insert(Key(6), 0, 5), 0);  // key 1 was used at epoch 4: key 4 goes
  EXPECT_EQ(pool.Find(Key(4), 0, 5), -1);
  ASSERT_GE(pool.Insert(Key(7), 0, 6), 0);  // key 5 goes, then key 1's second chance is spent
  ASSERT_GE(pool.Insert(Key(8), 0, 7), 0);
  EXPECT_EQ(pool.Find(Key(1), 0, 7), -1);
  EXPECT_EQ(pool.Touch(0, one, gen, 7), -1) << "a remembered residency that ended finds nothing";
  EXPECT_EQ(pool.evictions(), 5);
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

TEST(HeadPool, HeldSlotsAreNeverEvictedUntilReleased) {
  HeadPool pool(1, 2);
  const int32_t a = pool.Insert(Key(1), 0, 1);
  const int32_t b = pool.Insert(Key(2), 0, 1);
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  EXPECT_TRUE(pool.Hold(0, a));
  EXPECT_TRUE(pool.Hold(0, a));  // two holders
  EXPECT_EQ(pool.held(0), 1);
  const uint32_t gen = pool.Generation(0, a);
  // Epochs later, with a never used again: the unheld slot is the only victim.
  EXPECT_EQ(pool.Insert(Key(3), 0, 5), b);
  EXPECT_EQ(pool.Insert(Key(4), 0, 6), b);
  EXPECT_EQ(pool.Insert(Key(5), 0, 6), -1);  // b is used in epoch 6, a is held
  pool.Forget(Key(1), 0);                    // a held copy is kept
  EXPECT_EQ(pool.Find(Key(1), 0, 7), a);
  EXPECT_EQ(pool.Generation(0, a), gen);
  pool.Unhold(0, a);
  EXPECT_EQ(pool.held(0), 1);  // one holder left
  EXPECT_EQ(pool.Insert(Key(6), 0, 8), b);
  pool.Unhold(0, a);
  EXPECT_EQ(pool.held(0), 0);
  EXPECT_EQ(pool.Find(Key(6), 0, 9), b);    // b in use this epoch
  EXPECT_EQ(pool.Insert(Key(7), 0, 9), a);  // released, a goes like any other
  // Free and owned slots are not held.
  const int32_t owned = pool.AllocOwned(0, 10);
  EXPECT_FALSE(pool.Hold(0, owned));
  EXPECT_FALSE(pool.Hold(0, 7));
  pool.Unhold(0, b);  // not held: nothing happens
  EXPECT_EQ(pool.held(0), 0);
}

// lost() moves whenever a cached page of the head may have left its slot, and only then: what a
// row's memo of its slots (LayerState::RowMemo) relies on.
TEST(HeadPool, LostCountsEvictionsAndForgetsOfItsHeadOnly) {
  HeadPool pool(2, 2);
  const int32_t a = pool.Insert(Key(1), 0, 1);
  const int32_t b = pool.Insert(Key(2), 0, 1);
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  EXPECT_EQ(pool.lost(0), 0);  // free slots filled: nothing lost
  const int32_t owned = pool.AllocOwned(1, 1);
  ASSERT_GE(owned, 0);
  EXPECT_EQ(pool.Adopt(1, owned, Key(3), 1), owned);  // owned -> cached: nothing lost
  EXPECT_EQ(pool.Find(Key(1), 0, 2), a);              // hits and uses: nothing lost
  EXPECT_EQ(pool.Touch(0, b, pool.Generation(0, b), 2), b);
  EXPECT_EQ(pool.lost(0), 0);
  EXPECT_EQ(pool.Insert(Key(4), 0, 3), a);  // key 1 evicted
  EXPECT_EQ(pool.lost(0), 1);
  EXPECT_EQ(pool.lost(1), 0);  // the other head's sub-pool
  ASSERT_TRUE(pool.Hold(0, b));
  // Held: the slot keeps the page, but the call counts (whoever drops the page must not trust a
  // memo of it).
  pool.Forget(Key(2), 0);
  EXPECT_EQ(pool.lost(0), 2);
  EXPECT_EQ(pool.Find(Key(2), 0, 4), b);
  pool.Forget(Key(9), 1);  // not cached: counted all the same
  EXPECT_EQ(pool.lost(1), 1);
}

}  // namespace
}  // namespace pagoda::worker_internal
