// Store behaviour over the host tier (and an SSD tier where movement needs one).
#include "pagoda/kvstore/store.h"

#include <sys/mman.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pagoda/kvstore/prefix.h"
#include "test_util.h"

namespace pagoda {
namespace {

using ::pagoda::testing::PageBytesFor;
using ::pagoda::testing::SmallLayout;
using ::pagoda::testing::SmallStoreOptions;
using ::pagoda::testing::TempDir;
using ::pagoda::testing::TestKey;

std::unique_ptr<Store> OpenOrDie(const StoreOptions& o) {
  auto s = Store::Open(o);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? std::move(*s) : nullptr;
}

absl::Status PutKey(Store& s, std::string_view tenant, uint64_t i, WriteOptions w = {}) {
  const PageKey k = TestKey(i);
  auto bytes = PageBytesFor(SmallLayout(), tenant, k);
  return s.Put(tenant, k, SmallLayout(), bytes, w);
}

// OK when the page reads back with exactly the bytes PageBytesFor gives.
absl::Status CheckKey(Store& s, std::string_view tenant, uint64_t i) {
  const PageKey k = TestKey(i);
  std::vector<uint8_t> out(SmallLayout().PageBytes());
  auto info = s.Get(tenant, k, absl::MakeSpan(out));
  if (!info.ok()) return info.status();
  if (out != PageBytesFor(SmallLayout(), tenant, k)) return absl::InternalError("WRONG BYTES");
  return absl::OkStatus();
}

Tier TierOf(Store& s, std::string_view tenant, uint64_t i) {
  auto info = s.Stat(tenant, TestKey(i));
  EXPECT_TRUE(info.ok()) << info.status();
  return info.ok() ? info->tier : Tier::kGpu;
}

TEST(StoreTest, PutGetRoundTrip) {
  auto s = OpenOrDie(SmallStoreOptions(16, ""));
  ASSERT_TRUE(PutKey(*s, "a", 1).ok());
  EXPECT_TRUE(CheckKey(*s, "a", 1).ok());
  auto info = s->Stat("a", TestKey(1));
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->layout, SmallLayout());
  EXPECT_EQ(info->tier, Tier::kHost);
  EXPECT_EQ(info->checksum, PageChecksum(PageBytesFor(SmallLayout(), "a", TestKey(1)).data(),
                                         SmallLayout().PageBytes()));
  EXPECT_TRUE(absl::IsNotFound(CheckKey(*s, "a", 2)));
  const StoreStats st = s->Stats();
  EXPECT_EQ(st.pages, 1u);
  EXPECT_EQ(st.misses, 1u);
  EXPECT_EQ(st.tiers[1].hits, 1u);
  EXPECT_EQ(st.tiers[1].used_bytes, SmallLayout().PageBytes());
  EXPECT_FALSE(s->HasTier(Tier::kSsd));
  EXPECT_FALSE(s->HasTier(Tier::kGpu));
}

TEST(StoreTest, OpenRejectsBadOptions) {
  StoreOptions o = SmallStoreOptions(4, "");
  o.layouts.clear();
  EXPECT_TRUE(absl::IsInvalidArgument(Store::Open(o).status()));
  o = SmallStoreOptions(4, "");
  o.layouts[0].head_dim = 3;
  EXPECT_TRUE(absl::IsInvalidArgument(Store::Open(o).status()));
  o = SmallStoreOptions(4, "");
  o.host_capacity_bytes = 100;  // smaller than one page
  EXPECT_TRUE(absl::IsInvalidArgument(Store::Open(o).status()));
  o = SmallStoreOptions(4, "");
  o.watermarks[1] = Watermarks{0.5, 0.9};  // high < low
  EXPECT_TRUE(absl::IsInvalidArgument(Store::Open(o).status()));
  o = SmallStoreOptions(4, "");
  o.max_lease_duration = absl::ZeroDuration();
  EXPECT_TRUE(absl::IsInvalidArgument(Store::Open(o).status()));
}

TEST(StoreTest, BadInputGetsClearErrorAndChangesNothing) {
  StoreOptions o = SmallStoreOptions(16, "");
  auto s = OpenOrDie(o);
  ASSERT_TRUE(PutKey(*s, "a", 1).ok());
  const StoreStats before = s->Stats();
  auto bytes = PageBytesFor(SmallLayout(), "a", TestKey(2));
  // Empty tenant.
  EXPECT_TRUE(absl::IsInvalidArgument(s->Put("", TestKey(2), SmallLayout(), bytes)));
  EXPECT_TRUE(
      absl::IsInvalidArgument(s->Put(std::string(256, 't'), TestKey(2), SmallLayout(), bytes)));
  // Unregistered (valid) layout, and an invalid one.
  PageLayout other = testing::OtherLayout();
  auto other_bytes = std::vector<uint8_t>(other.PageBytes(), 1);
  absl::Status st = s->Put("a", TestKey(2), other, other_bytes);
  EXPECT_TRUE(absl::IsInvalidArgument(st));
  EXPECT_THAT(std::string(st.message()), ::testing::HasSubstr("not registered"));
  PageLayout broken = SmallLayout();
  broken.page_tokens = 3;
  EXPECT_TRUE(absl::IsInvalidArgument(s->Reserve("a", TestKey(2), broken).status()));
  // Size mismatch.
  bytes.pop_back();
  st = s->Put("a", TestKey(2), SmallLayout(), bytes);
  EXPECT_TRUE(absl::IsInvalidArgument(st));
  EXPECT_THAT(std::string(st.message()), ::testing::HasSubstr("needs"));
  // Key already stored: the original bytes stay.
  auto evil = std::vector<uint8_t>(SmallLayout().PageBytes(), 0xEE);
  EXPECT_TRUE(absl::IsAlreadyExists(s->Put("a", TestKey(1), SmallLayout(), evil)));
  EXPECT_TRUE(CheckKey(*s, "a", 1).ok());
  // Short output buffer.
  std::vector<uint8_t> small(100);
  EXPECT_TRUE(absl::IsInvalidArgument(s->Get("a", TestKey(1), absl::MakeSpan(small)).status()));
  // Unknown reservations and leases.
  EXPECT_TRUE(absl::IsNotFound(s->Commit(12345)));
  EXPECT_TRUE(absl::IsNotFound(s->Abort(12345)));
  EXPECT_TRUE(absl::IsNotFound(s->ReleaseRead(999)));
  // Unknown stream.
  WriteOptions w;
  w.stream_id = 77;
  EXPECT_TRUE(absl::IsInvalidArgument(PutKey(*s, "a", 3, w)));
  // Missing pages.
  EXPECT_TRUE(absl::IsNotFound(s->Remove("a", TestKey(9))));
  EXPECT_TRUE(absl::IsNotFound(s->Pin("a", TestKey(9))));
  EXPECT_TRUE(absl::IsFailedPrecondition(s->Unpin("a", TestKey(1))));
  // Tiers the store lacks.
  PageKey k1 = TestKey(1);
  EXPECT_TRUE(absl::IsFailedPrecondition(s->Prefetch("a", {&k1, 1}, Tier::kGpu).status()));
  EXPECT_TRUE(absl::IsFailedPrecondition(s->Demote("a", {&k1, 1}, Tier::kSsd).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(s->Prefetch("a", {&k1, 1}, Tier::kSsd).status()));

  const StoreStats after = s->Stats();
  EXPECT_EQ(after.pages, before.pages);
  EXPECT_EQ(after.puts, before.puts);
  EXPECT_EQ(after.tiers[1].used_bytes, before.tiers[1].used_bytes);
  EXPECT_EQ(after.pinned_bytes, 0u);
  EXPECT_TRUE(CheckKey(*s, "a", 1).ok());
}

TEST(StoreTest, TenantsAreIsolatedUnderTheSameKey) {
  auto s = OpenOrDie(SmallStoreOptions(16, ""));
  ASSERT_TRUE(PutKey(*s, "alice", 1).ok());
  EXPECT_FALSE(s->Exists("bob", TestKey(1)));
  EXPECT_TRUE(absl::IsNotFound(CheckKey(*s, "bob", 1)));
  EXPECT_TRUE(absl::IsNotFound(s->Remove("bob", TestKey(1))));
  ASSERT_TRUE(PutKey(*s, "bob", 1).ok());  // same key, other tenant, other bytes
  EXPECT_TRUE(CheckKey(*s, "alice", 1).ok());
  EXPECT_TRUE(CheckKey(*s, "bob", 1).ok());
  ASSERT_TRUE(s->Remove("bob", TestKey(1)).ok());
  EXPECT_TRUE(CheckKey(*s, "alice", 1).ok());
  PageKey k = TestKey(1);
  EXPECT_EQ(s->LongestCachedPrefix("bob", {&k, 1}), 0u);
  EXPECT_EQ(s->LongestCachedPrefix("alice", {&k, 1}), 1u);
}

TEST(StoreTest, TwoPhaseWriteIsInvisibleUntilCommitUnderConcurrentReaders) {
  auto s = OpenOrDie(SmallStoreOptions(64, ""));
  const HostArena arena = s->HostArenaInfo();
  absl::StatusOr<int> fd = s->TenantArenaFd("t");
  ASSERT_TRUE(fd.ok()) << fd.status();
  ASSERT_EQ(arena.size, 64 * SmallLayout().PageBytes());
  // A "local client": its own shared mapping of its tenant's memfd.
  void* m = mmap(nullptr, arena.size, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
  ASSERT_NE(m, MAP_FAILED);
  uint8_t* client = static_cast<uint8_t*>(m);

  constexpr int kKeys = 20;
  std::atomic<bool> stop{false};
  std::atomic<int> wrong{0}, seen{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 3; ++r) {
    readers.emplace_back([&] {
      std::vector<uint8_t> out(SmallLayout().PageBytes());
      while (!stop.load()) {
        for (int i = 0; i < kKeys; ++i) {
          auto info = s->Get("t", TestKey(i), absl::MakeSpan(out));
          if (info.ok()) {
            seen++;
            if (out != PageBytesFor(SmallLayout(), "t", TestKey(i))) wrong++;
          } else if (!absl::IsNotFound(info.status())) {
            wrong++;
          }
          auto lease = s->AcquireRead("t", TestKey(i));
          if (lease.ok()) {
            std::vector<uint8_t> copy(arena.base + lease->arena_offset,
                                      arena.base + lease->arena_offset + lease->size);
            if (PageChecksum(copy.data(), copy.size()) == lease->checksum &&
                copy != PageBytesFor(SmallLayout(), "t", TestKey(i))) {
              wrong++;
            }
            s->ReleaseRead(lease->lease_id).IgnoreError();
          }
        }
      }
    });
  }
  for (int i = 0; i < kKeys; ++i) {
    auto r = s->Reserve("t", TestKey(i), SmallLayout());
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->size, SmallLayout().PageBytes());
    // A second writer of the same key is refused while the first writes.
    EXPECT_TRUE(absl::IsAlreadyExists(s->Reserve("t", TestKey(i), SmallLayout()).status()));
    const auto bytes = PageBytesFor(SmallLayout(), "t", TestKey(i));
    // Write slowly, in pieces, through the client mapping; readers must never see the page.
    for (size_t off = 0; off < bytes.size(); off += 512) {
      std::memcpy(client + r->arena_offset + off, bytes.data() + off, 512);
      EXPECT_FALSE(s->Exists("t", TestKey(i)));
      std::this_thread::yield();
    }
    if (i % 5 == 4) {
      ASSERT_TRUE(s->Abort(r->id).ok());  // aborted pages never appear
      EXPECT_TRUE(absl::IsNotFound(s->Commit(r->id)));
    } else {
      ASSERT_TRUE(s->Commit(r->id).ok());
      EXPECT_TRUE(absl::IsNotFound(s->Commit(r->id)));
      EXPECT_TRUE(s->Exists("t", TestKey(i)));
    }
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  stop = true;
  for (auto& t : readers) t.join();
  munmap(m, arena.size);
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(seen.load(), 0);
  for (int i = 0; i < kKeys; ++i) {
    if (i % 5 == 4) {
      EXPECT_FALSE(s->Exists("t", TestKey(i)));
    } else {
      EXPECT_TRUE(CheckKey(*s, "t", i).ok());
    }
  }
  // Aborted keys are writable again.
  EXPECT_TRUE(PutKey(*s, "t", 4).ok());
}

TEST(StoreTest, CommitChecksumsWhatTheClientWrote) {
  auto s = OpenOrDie(SmallStoreOptions(4, ""));
  auto r = s->Reserve("t", TestKey(1), SmallLayout());
  ASSERT_TRUE(r.ok());
  uint8_t* p = s->HostArenaInfo().base + r->arena_offset;
  std::memset(p, 0x5A, r->size);
  ASSERT_TRUE(s->Commit(r->id).ok());
  auto info = s->Stat("t", TestKey(1));
  ASSERT_TRUE(info.ok());
  std::vector<uint8_t> want(r->size, 0x5A);
  EXPECT_EQ(info->checksum, PageChecksum(want.data(), want.size()));
  // Bytes changed behind the store's back (a rogue client) are caught on read, never served.
  p[17] ^= 0xFF;
  std::vector<uint8_t> out(r->size);
  EXPECT_TRUE(absl::IsDataLoss(s->Get("t", TestKey(1), absl::MakeSpan(out)).status()));
  EXPECT_FALSE(s->Exists("t", TestKey(1)));
  EXPECT_EQ(s->Stats().checksum_failures, 1u);
}

TEST(StoreTest, EvictionDemotesInLruOrderUnderWatermarksAndHitsPromote) {
  TempDir dir;
  StoreOptions o = SmallStoreOptions(10, dir.path());
  o.watermarks[1] = Watermarks{0.8, 0.5};
  auto s = OpenOrDie(o);
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(PutKey(*s, "t", i).ok());  // 8/10 = high: no eviction
  for (int i = 0; i < 8; ++i) EXPECT_EQ(TierOf(*s, "t", i), Tier::kHost) << i;
  ASSERT_TRUE(CheckKey(*s, "t", 0).ok());  // 0 becomes most recently used
  ASSERT_TRUE(PutKey(*s, "t", 8).ok());    // 9 > 8: demote LRU pages down to 5
  for (int i : {1, 2, 3, 4}) EXPECT_EQ(TierOf(*s, "t", i), Tier::kSsd) << i;
  for (int i : {0, 5, 6, 7, 8}) EXPECT_EQ(TierOf(*s, "t", i), Tier::kHost) << i;
  StoreStats st = s->Stats();
  EXPECT_EQ(st.tiers[1].evictions, 4u);
  EXPECT_EQ(st.tiers[1].pages, 5u);
  EXPECT_EQ(st.tiers[2].pages, 4u);
  EXPECT_EQ(st.tiers[2].bytes_in, 4 * SmallLayout().PageBytes());
  // A hit on SSD reads the right bytes and promotes the page.
  ASSERT_TRUE(CheckKey(*s, "t", 2).ok());
  EXPECT_EQ(TierOf(*s, "t", 2), Tier::kHost);
  st = s->Stats();
  EXPECT_EQ(st.tiers[2].hits, 1u);
  EXPECT_EQ(st.tiers[1].promotions, 1u);
  EXPECT_EQ(st.tiers[2].pages, 3u);
  // Explicit demote and prefetch.
  PageKey k = TestKey(0);
  auto moved = s->Demote("t", {&k, 1}, Tier::kSsd);
  ASSERT_TRUE(moved.ok());
  EXPECT_EQ(*moved, 1u);
  EXPECT_EQ(TierOf(*s, "t", 0), Tier::kSsd);
  moved = s->Prefetch("t", {&k, 1}, Tier::kHost);
  ASSERT_TRUE(moved.ok());
  EXPECT_EQ(*moved, 1u);
  EXPECT_EQ(TierOf(*s, "t", 0), Tier::kHost);
  for (int i = 0; i < 9; ++i) EXPECT_TRUE(CheckKey(*s, "t", i).ok()) << i;
}

TEST(StoreTest, NoPromotionWhenDisabled) {
  TempDir dir;
  StoreOptions o = SmallStoreOptions(4, dir.path());
  o.promote_on_hit = false;
  auto s = OpenOrDie(o);
  ASSERT_TRUE(PutKey(*s, "t", 1).ok());
  PageKey k = TestKey(1);
  ASSERT_TRUE(s->Demote("t", {&k, 1}, Tier::kSsd).ok());
  ASSERT_TRUE(CheckKey(*s, "t", 1).ok());
  EXPECT_EQ(TierOf(*s, "t", 1), Tier::kSsd);
  // A zero-copy lease needs the page in the arena, so it promotes anyway.
  auto lease = s->AcquireRead("t", k);
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(TierOf(*s, "t", 1), Tier::kHost);
  const uint8_t* p = s->HostArenaInfo().base + lease->arena_offset;
  EXPECT_EQ(PageChecksum(p, lease->size), lease->checksum);
  EXPECT_TRUE(s->ReleaseRead(lease->lease_id).ok());
  EXPECT_TRUE(s->ReleaseRead(lease->lease_id).ok());  // idempotent
}

TEST(StoreTest, WithoutSsdEvictionDropsLruPages) {
  StoreOptions o = SmallStoreOptions(4, "");
  o.watermarks[1] = Watermarks{1.0, 0.75};
  auto s = OpenOrDie(o);
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(PutKey(*s, "t", i).ok());
  EXPECT_FALSE(s->Exists("t", TestKey(0)));
  EXPECT_FALSE(s->Exists("t", TestKey(1)));
  for (int i = 2; i < 6; ++i) EXPECT_TRUE(CheckKey(*s, "t", i).ok()) << i;
  EXPECT_EQ(s->Stats().dropped, 2u);
}

TEST(StoreTest, ExpiredLeaseDoesNotStallEviction) {
  StoreOptions o = SmallStoreOptions(4, "");
  o.watermarks[1] = Watermarks{1.0, 1.0};
  o.max_lease_duration = absl::Milliseconds(200);
  auto s = OpenOrDie(o);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(PutKey(*s, "t", i).ok());
  // Lease every page; a long request is clamped to the 200 ms bound.
  std::vector<ReadLease> leases;
  for (int i = 0; i < 4; ++i) {
    auto l = s->AcquireRead("t", TestKey(i), absl::Hours(1));
    ASSERT_TRUE(l.ok()) << l.status();
    EXPECT_LE(l->expiry - absl::Now(), absl::Milliseconds(201));
    leases.push_back(*l);
  }
  EXPECT_EQ(s->Stats().active_leases, 4u);
  // While the leases last, nothing can be evicted: a write fails cleanly and changes nothing.
  absl::Status st = PutKey(*s, "t", 10);
  EXPECT_TRUE(absl::IsResourceExhausted(st)) << st;
  EXPECT_FALSE(s->Exists("t", TestKey(10)));
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(CheckKey(*s, "t", i).ok());
  // The readers never release. Once the bound passes, eviction proceeds anyway.
  std::this_thread::sleep_for(std::chrono::milliseconds(250));
  ASSERT_TRUE(PutKey(*s, "t", 10).ok());
  // Page 0 was least recently used... but Get above touched all; whichever left, its lease's
  // bytes are now someone else's: the checksum in the lease tells the stale reader.
  int stale = 0;
  for (const ReadLease& l : leases) {
    const uint8_t* p = s->HostArenaInfo().base + l.arena_offset;
    if (PageChecksum(p, l.size) != l.checksum) stale++;
  }
  EXPECT_EQ(stale, 1);
  EXPECT_EQ(s->Stats().pages, 4u);
  for (const ReadLease& l : leases) EXPECT_TRUE(s->ReleaseRead(l.lease_id).ok());
  EXPECT_EQ(s->Stats().active_leases, 0u);
}

TEST(StoreTest, PinnedPagesAreNeverEvictedAndPinsHaveAQuota) {
  StoreOptions o = SmallStoreOptions(4, "");
  o.watermarks[1] = Watermarks{1.0, 1.0};
  o.default_pin_quota_bytes = 2 * SmallLayout().PageBytes();
  auto s = OpenOrDie(o);
  WriteOptions pin;
  pin.pin = true;
  ASSERT_TRUE(PutKey(*s, "t", 0, pin).ok());
  ASSERT_TRUE(PutKey(*s, "t", 1).ok());
  ASSERT_TRUE(s->Pin("t", TestKey(1)).ok());
  ASSERT_TRUE(s->Pin("t", TestKey(1)).ok());  // pins nest without more quota
  ASSERT_TRUE(PutKey(*s, "t", 2).ok());
  EXPECT_TRUE(absl::IsResourceExhausted(s->Pin("t", TestKey(2))));
  EXPECT_TRUE(absl::IsResourceExhausted(PutKey(*s, "t", 3, pin)));
  EXPECT_FALSE(s->Exists("t", TestKey(3)));
  EXPECT_EQ(s->Stats().pinned_bytes, 2 * SmallLayout().PageBytes());
  for (int i = 3; i < 12; ++i) ASSERT_TRUE(PutKey(*s, "t", i).ok());
  EXPECT_TRUE(CheckKey(*s, "t", 0).ok());
  EXPECT_TRUE(CheckKey(*s, "t", 1).ok());
  EXPECT_FALSE(s->Exists("t", TestKey(2)));
  // Unpinned once it is evictable again.
  ASSERT_TRUE(s->Unpin("t", TestKey(1)).ok());
  ASSERT_TRUE(s->Unpin("t", TestKey(1)).ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(s->Unpin("t", TestKey(1))));
  for (int i = 20; i < 24; ++i) ASSERT_TRUE(PutKey(*s, "t", i).ok());
  EXPECT_FALSE(s->Exists("t", TestKey(1)));
  EXPECT_TRUE(s->Exists("t", TestKey(0)));
  // A host full of pinned pages refuses writes instead of dropping a pin.
  o.default_pin_quota_bytes = 1ULL << 30;
  auto full = OpenOrDie(o);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(PutKey(*full, "t", i, pin).ok());
  EXPECT_TRUE(absl::IsResourceExhausted(PutKey(*full, "t", 9)));
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(CheckKey(*full, "t", i).ok());
}

TEST(StoreTest, TenantQuotasPerTierGiveClearErrors) {
  TempDir dir;
  StoreOptions o = SmallStoreOptions(16, dir.path());
  TenantQuota q;
  q.tier_bytes[1] = 2 * SmallLayout().PageBytes();
  q.tier_bytes[2] = 1 * SmallLayout().PageBytes();
  o.tenant_quotas["small"] = q;
  auto s = OpenOrDie(o);
  ASSERT_TRUE(PutKey(*s, "small", 0).ok());
  ASSERT_TRUE(PutKey(*s, "small", 1).ok());
  // At the host quota with every own page pinned: refused, nothing changes.
  ASSERT_TRUE(s->Pin("small", TestKey(0)).ok());
  ASSERT_TRUE(s->Pin("small", TestKey(1)).ok());
  absl::Status st = PutKey(*s, "small", 2);
  EXPECT_TRUE(absl::IsResourceExhausted(st));
  EXPECT_THAT(std::string(st.message()), ::testing::HasSubstr("quota"));
  EXPECT_FALSE(s->Exists("small", TestKey(2)));
  EXPECT_EQ(TierOf(*s, "small", 0), Tier::kHost);
  EXPECT_EQ(TierOf(*s, "small", 1), Tier::kHost);
  // Other tenants are unaffected.
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(PutKey(*s, "big", i).ok());
  // The SSD quota refuses an explicit demotion past it.
  ASSERT_TRUE(s->Unpin("small", TestKey(0)).ok());
  ASSERT_TRUE(s->Unpin("small", TestKey(1)).ok());
  PageKey k0 = TestKey(0), k1 = TestKey(1);
  ASSERT_TRUE(s->Demote("small", {&k0, 1}, Tier::kSsd).ok());
  EXPECT_TRUE(absl::IsResourceExhausted(s->Demote("small", {&k1, 1}, Tier::kSsd).status()));
  EXPECT_EQ(TierOf(*s, "small", 1), Tier::kHost);
  // Room in host again: the write that failed now succeeds.
  ASSERT_TRUE(PutKey(*s, "small", 2).ok());
  for (int i : {2, 1}) EXPECT_TRUE(CheckKey(*s, "small", i).ok()) << i;
  // Reading page 0 promotes it into the full host quota: the least recent host page (2) goes
  // down, and as the SSD quota is full too (page 0 is still charged there while it moves), leaves.
  EXPECT_TRUE(CheckKey(*s, "small", 0).ok());
  EXPECT_FALSE(s->Exists("small", TestKey(2)));
  EXPECT_TRUE(CheckKey(*s, "small", 1).ok());
}

TEST(StoreTest, TenantAtItsQuotaEvictsItsOwnLeastRecentPagesBeforeRefusing) {
  TempDir dir;
  StoreOptions o = SmallStoreOptions(64, dir.path());
  const uint64_t page = SmallLayout().PageBytes();
  TenantQuota q;
  q.tier_bytes[1] = 4 * page;
  q.tier_bytes[2] = 6 * page;
  o.tenant_quotas["small"] = q;
  o.promote_on_hit = false;  // reads leave pages where they are; the prefetch below moves one
  auto s = OpenOrDie(o);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(PutKey(*s, "other", i).ok());
  // 20 writes through a 4-page host quota and a 6-page SSD quota: every write succeeds, the
  // tenant's own oldest pages go down and then out; the other tenant keeps all of its pages.
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(PutKey(*s, "small", i).ok()) << i;
  for (int i = 0; i < 5; ++i) EXPECT_EQ(TierOf(*s, "other", i), Tier::kHost) << i;
  for (int i = 16; i < 20; ++i) EXPECT_EQ(TierOf(*s, "small", i), Tier::kHost) << i;
  for (int i = 10; i < 16; ++i) EXPECT_EQ(TierOf(*s, "small", i), Tier::kSsd) << i;
  for (int i = 0; i < 10; ++i) EXPECT_FALSE(s->Exists("small", TestKey(i))) << i;
  for (int i = 10; i < 20; ++i) EXPECT_TRUE(CheckKey(*s, "small", i).ok()) << i;
  // A prefetch of an SSD page into the full host quota: the tenant's least recent host page (16)
  // goes down, and its least recent SSD page (11; 10 is the one moving) leaves.
  PageKey k10 = TestKey(10);
  auto moved = s->Prefetch("small", {&k10, 1}, Tier::kHost);
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_EQ(*moved, 1u);
  EXPECT_EQ(TierOf(*s, "small", 10), Tier::kHost);
  EXPECT_EQ(TierOf(*s, "small", 16), Tier::kSsd);
  EXPECT_FALSE(s->Exists("small", TestKey(11)));
  EXPECT_LE(s->Stats().tiers[1].used_bytes, (4 + 5) * page);
  for (int i : {10, 12, 13, 14, 15, 16, 17, 18, 19}) {
    EXPECT_TRUE(CheckKey(*s, "small", i).ok()) << i;
  }
  // Every own host page pinned: refused, nothing changes.
  for (int i : {10, 17, 18, 19}) ASSERT_TRUE(s->Pin("small", TestKey(i)).ok());
  EXPECT_TRUE(absl::IsResourceExhausted(PutKey(*s, "small", 20)));
  EXPECT_FALSE(s->Exists("small", TestKey(20)));
  for (int i : {10, 17, 18, 19}) EXPECT_EQ(TierOf(*s, "small", i), Tier::kHost) << i;
}

TEST(StoreTest, RollingWindowKeepsSinksPinsAndTheLastWPages) {
  auto s = OpenOrDie(SmallStoreOptions(64, ""));
  StreamOptions so;
  so.window_pages = 3;
  so.sink_pages = 2;
  ASSERT_TRUE(s->OpenStream("t", 7, so).ok());
  EXPECT_TRUE(absl::IsAlreadyExists(s->OpenStream("t", 7, so)));
  EXPECT_TRUE(absl::IsInvalidArgument(s->OpenStream("t", 0, so)));
  EXPECT_TRUE(absl::IsInvalidArgument(s->OpenStream("t", 8, StreamOptions{0, 1})));
  WriteOptions w;
  w.stream_id = 7;
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(PutKey(*s, "t", i, w).ok());
    if (i == 4) {
      ASSERT_TRUE(s->Pin("t", TestKey(4)).ok());  // a caller-pinned prefix page
    }
  }
  ASSERT_TRUE(PutKey(*s, "t", 100).ok());  // not on the stream: untouched by the window
  for (int i : {0, 1, 4, 7, 8, 9, 100}) EXPECT_TRUE(CheckKey(*s, "t", i).ok()) << i;
  for (int i : {2, 3, 5, 6}) EXPECT_FALSE(s->Exists("t", TestKey(i))) << i;
  EXPECT_EQ(s->Stats().window_dropped, 4u);
  // A page removed by hand leaves the window without harm.
  ASSERT_TRUE(s->Remove("t", TestKey(9)).ok());
  ASSERT_TRUE(PutKey(*s, "t", 10, w).ok());
  EXPECT_FALSE(s->Exists("t", TestKey(7)));
  EXPECT_TRUE(s->Exists("t", TestKey(8)));
  ASSERT_TRUE(s->CloseStream("t", 7).ok());
  EXPECT_TRUE(absl::IsNotFound(s->CloseStream("t", 7)));
  EXPECT_TRUE(absl::IsInvalidArgument(PutKey(*s, "t", 11, w)));
  EXPECT_TRUE(s->Exists("t", TestKey(10)));
}

TEST(StoreTest, LongestCachedPrefixOverChainedKeys) {
  auto s = OpenOrDie(SmallStoreOptions(64, ""));
  std::vector<int32_t> tokens(16 * 6);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>(i * 31 % 1000);
  const auto keys = ChainPageKeys(tokens, 16, PageKeyExtra{"m", 0, "salt"});
  ASSERT_EQ(keys.size(), 6u);
  for (int i : {0, 1, 2, 4}) {
    auto b = PageBytesFor(SmallLayout(), "t", keys[i]);
    ASSERT_TRUE(s->Put("t", keys[i], SmallLayout(), b).ok());
  }
  EXPECT_EQ(s->LongestCachedPrefix("t", keys), 3u);
  EXPECT_EQ(s->LongestCachedPrefix("other", keys), 0u);
  EXPECT_EQ(s->LongestCachedPrefix("t", {}), 0u);
}

TEST(StoreTest, RemoveWhileLeasedFreesAndLeaseStaysReleasable) {
  auto s = OpenOrDie(SmallStoreOptions(4, ""));
  ASSERT_TRUE(PutKey(*s, "t", 1).ok());
  auto l = s->AcquireRead("t", TestKey(1));
  ASSERT_TRUE(l.ok());
  ASSERT_TRUE(s->Remove("t", TestKey(1)).ok());
  EXPECT_FALSE(s->Exists("t", TestKey(1)));
  EXPECT_TRUE(s->ReleaseRead(l->lease_id).ok());
  EXPECT_EQ(s->Stats().tiers[1].used_bytes, 0u);
  EXPECT_EQ(s->Stats().removes, 1u);
}

// A batch of leases answers each key on its own: a missing key fails alone, the others lease the
// same bytes a single AcquireRead would; a batch release frees every lease it knows and reports an
// id the store never issued.
TEST(StoreTest, BatchedLeasesAnswerEachKey) {
  auto s = OpenOrDie(SmallStoreOptions(8, ""));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(PutKey(*s, "t", i).ok());
  const std::vector<PageKey> keys = {TestKey(0), TestKey(7), TestKey(2), TestKey(1)};
  auto leases = s->AcquireReads("t", keys);
  ASSERT_EQ(leases.size(), keys.size());
  EXPECT_TRUE(absl::IsNotFound(leases[1].status())) << leases[1].status();
  std::vector<uint64_t> ids;
  for (int i : {0, 2, 3}) {
    ASSERT_TRUE(leases[i].ok()) << leases[i].status();
    EXPECT_EQ(leases[i]->key, keys[i]);
    const uint8_t* p = s->HostArenaInfo().base + leases[i]->arena_offset;
    EXPECT_EQ(PageChecksum(p, leases[i]->size), leases[i]->checksum);
    auto one = s->AcquireRead("t", keys[i]);
    ASSERT_TRUE(one.ok());
    EXPECT_EQ(one->arena_offset, leases[i]->arena_offset);
    ids.push_back(leases[i]->lease_id);
    ids.push_back(one->lease_id);
  }
  EXPECT_EQ(s->Stats().active_leases, 6u);
  ids.push_back(uint64_t{1} << 60);  // never issued
  EXPECT_TRUE(absl::IsNotFound(s->ReleaseReads(ids)));
  EXPECT_EQ(s->Stats().active_leases, 0u);
  ids.pop_back();
  EXPECT_TRUE(s->ReleaseReads(ids).ok()) << "releasing twice is fine";
  for (const auto& l : s->AcquireReads("nobody", keys)) {
    EXPECT_FALSE(l.ok()) << "an unknown tenant leases nothing";
  }
}

// A batch far longer than the lookups AcquireReads runs ahead of itself (and shorter ones): result
// i still answers key i, missing and repeated keys included.
TEST(StoreTest, LongLeaseBatchesAnswerEachKeyInOrder) {
  auto s = OpenOrDie(SmallStoreOptions(64, ""));
  for (int i = 0; i < 40; ++i) ASSERT_TRUE(PutKey(*s, "t", i).ok());
  for (int n : {1, 3, 13, 50}) {
    std::vector<PageKey> keys;
    for (int i = 0; i < n; ++i) keys.push_back(TestKey(i % 3 == 2 ? 1000 + i : (i * 7) % 40));
    auto leases = s->AcquireReads("t", keys);
    ASSERT_EQ(leases.size(), keys.size());
    std::vector<uint64_t> ids;
    for (int i = 0; i < n; ++i) {
      if (i % 3 == 2) {
        EXPECT_TRUE(absl::IsNotFound(leases[i].status())) << i;
        continue;
      }
      ASSERT_TRUE(leases[i].ok()) << i << ": " << leases[i].status();
      EXPECT_EQ(leases[i]->key, keys[i]);
      const uint8_t* p = s->HostArenaInfo().base + leases[i]->arena_offset;
      EXPECT_EQ(PageChecksum(p, leases[i]->size), leases[i]->checksum);
      ids.push_back(leases[i]->lease_id);
    }
    EXPECT_EQ(s->Stats().active_leases, ids.size());
    EXPECT_TRUE(s->ReleaseReads(ids).ok());
    EXPECT_EQ(s->Stats().active_leases, 0u);
  }
}

TEST(StoreTest, LayoutClassesHaveTheirOwnSlots) {
  StoreOptions o = SmallStoreOptions(8, "");
  o.layouts = {SmallLayout(), testing::OtherLayout()};
  o.segment_bytes = testing::OtherLayout().PageBytes();  // 8 KiB: 2 small or 1 other per segment
  o.host_capacity_bytes = 4 * o.segment_bytes;
  auto s = OpenOrDie(o);
  ASSERT_TRUE(PutKey(*s, "t", 1).ok());
  const PageLayout other = testing::OtherLayout();
  auto ob = PageBytesFor(other, "t", TestKey(2));
  ASSERT_TRUE(s->Put("t", TestKey(2), other, ob).ok());
  std::vector<uint8_t> out(other.PageBytes());
  auto info = s->Get("t", TestKey(2), absl::MakeSpan(out));
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->layout, other);
  EXPECT_EQ(out, ob);
  EXPECT_TRUE(CheckKey(*s, "t", 1).ok());
}

}  // namespace
}  // namespace pagoda
