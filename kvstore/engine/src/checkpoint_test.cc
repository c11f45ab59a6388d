// Checkpoints and SSD copies of memory-tier pages: what a stop or a crash keeps, however a page got
// into memory (commit, promotion on read, prefetch), and what removal and eviction do to copies.
#include <chrono>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "pagoda/kvstore/store.h"
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

absl::Status PutKey(Store& s, uint64_t i) {
  auto bytes = PageBytesFor(SmallLayout(), "t", TestKey(i));
  return s.Put("t", TestKey(i), SmallLayout(), bytes);
}

// OK only with exactly the right bytes; Internal for wrong bytes.
absl::Status CheckKey(Store& s, uint64_t i) {
  std::vector<uint8_t> out(SmallLayout().PageBytes());
  auto info = s.Get("t", TestKey(i), absl::MakeSpan(out));
  if (!info.ok()) return info.status();
  if (out != PageBytesFor(SmallLayout(), "t", TestKey(i))) {
    return absl::InternalError("WRONG BYTES SERVED");
  }
  return absl::OkStatus();
}

std::vector<PageKey> Keys(uint64_t from, uint64_t to) {
  std::vector<PageKey> k;
  for (uint64_t i = from; i < to; ++i) k.push_back(TestKey(i));
  return k;
}

TEST(CheckpointTest, CopiesMemoryOnlyPagesAndKeepsThemInMemory) {
  TempDir dir;
  const StoreOptions o = SmallStoreOptions(64, dir.path());
  {
    auto s = OpenOrDie(o);
    for (uint64_t i = 0; i < 30; ++i) ASSERT_TRUE(PutKey(*s, i).ok());
    EXPECT_EQ(s->Stats().memory_only_pages, 30u);
    absl::StatusOr<CheckpointResult> r = s->Checkpoint();
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->pages_written, 30u);
    EXPECT_EQ(r->pages_skipped, 0u);
    const StoreStats st = s->Stats();
    EXPECT_EQ(st.memory_only_pages, 0u);
    EXPECT_EQ(st.tiers[1].pages, 30u) << "a checkpoint leaves pages where they are";
    EXPECT_EQ(st.ssd_copy_bytes, 30 * SmallLayout().PageBytes());
    EXPECT_EQ(st.checkpoints, 1u);
    // A second checkpoint has nothing to write.
    r = s->Checkpoint();
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->pages_written, 0u);
    // Evicting a page with a copy writes nothing.
    const uint64_t ssd_in = s->Stats().tiers[2].bytes_in;
    auto moved = s->Demote("t", Keys(0, 10), Tier::kSsd);
    ASSERT_TRUE(moved.ok());
    EXPECT_EQ(*moved, 10u);
    EXPECT_EQ(s->Stats().tiers[2].bytes_in, ssd_in);
    EXPECT_EQ(s->Stats().tiers[2].pages, 10u);
    EXPECT_EQ(s->Stats().ssd_copy_bytes, 20 * SmallLayout().PageBytes());
    for (uint64_t i = 0; i < 30; ++i) EXPECT_TRUE(CheckKey(*s, i).ok()) << i;
  }  // no graceful demotion: the destructor keeps only what is on SSD
  auto s = OpenOrDie(o);
  EXPECT_EQ(s->Stats().tiers[2].pages, 30u);
  for (uint64_t i = 0; i < 30; ++i) EXPECT_TRUE(CheckKey(*s, i).ok()) << i;
}

TEST(CheckpointTest, PagesSurviveRestartsWithPromotionsAndPrefetchesBetween) {
  TempDir dir;
  const StoreOptions o = SmallStoreOptions(64, dir.path());
  constexpr uint64_t kPages = 40;
  {
    auto s = OpenOrDie(o);
    for (uint64_t i = 0; i < kPages; ++i) ASSERT_TRUE(PutKey(*s, i).ok());
    ASSERT_TRUE(s->Checkpoint().ok());
  }
  for (int round = 0; round < 4; ++round) {
    auto s = OpenOrDie(o);
    ASSERT_EQ(s->Stats().tiers[2].pages, kPages) << "round " << round;
    // Reads promote some pages, a prefetch others, a lease a third group; new pages too.
    for (uint64_t i = 0; i < 10; ++i) ASSERT_TRUE(CheckKey(*s, i).ok()) << i;
    auto moved = s->Prefetch("t", Keys(10, 20), Tier::kHost);
    ASSERT_TRUE(moved.ok());
    EXPECT_EQ(*moved, 10u);
    for (uint64_t i = 20; i < 25; ++i) {
      auto lease = s->AcquireRead("t", TestKey(i));
      ASSERT_TRUE(lease.ok());
      ASSERT_TRUE(s->ReleaseRead(lease->lease_id).ok());
    }
    EXPECT_EQ(s->Stats().tiers[1].pages, 25u);
    EXPECT_EQ(s->Stats().memory_only_pages, 0u) << "promoted pages keep their SSD record";
    auto r = s->Checkpoint();
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->pages_written, 0u);
  }
  auto s = OpenOrDie(o);
  for (uint64_t i = 0; i < kPages; ++i) EXPECT_TRUE(CheckKey(*s, i).ok()) << i;
}

TEST(CheckpointTest, RemovedPagesDoNotComeBack) {
  TempDir dir;
  const StoreOptions o = SmallStoreOptions(64, dir.path());
  {
    auto s = OpenOrDie(o);
    for (uint64_t i = 0; i < 10; ++i) ASSERT_TRUE(PutKey(*s, i).ok());
    ASSERT_TRUE(s->Checkpoint().ok());
    for (uint64_t i = 0; i < 5; ++i) ASSERT_TRUE(s->Remove("t", TestKey(i)).ok());
    EXPECT_EQ(s->Stats().ssd_copy_bytes, 5 * SmallLayout().PageBytes());
  }
  {
    auto s = OpenOrDie(o);
    for (uint64_t i = 0; i < 5; ++i) EXPECT_FALSE(s->Exists("t", TestKey(i))) << i;
    for (uint64_t i = 5; i < 10; ++i) EXPECT_TRUE(CheckKey(*s, i).ok()) << i;
    // A promoted page removed: its kept record goes too.
    ASSERT_TRUE(CheckKey(*s, 5).ok());
    ASSERT_EQ(s->Stat("t", TestKey(5))->tier, Tier::kHost);
    ASSERT_TRUE(s->Remove("t", TestKey(5)).ok());
  }
  auto s = OpenOrDie(o);
  EXPECT_FALSE(s->Exists("t", TestKey(5)));
  EXPECT_EQ(s->Stats().tiers[2].pages, 4u);
}

TEST(CheckpointTest, BackgroundCheckpointsCopyNewPages) {
  TempDir dir;
  StoreOptions o = SmallStoreOptions(64, dir.path());
  o.checkpoint_interval = absl::Milliseconds(10);
  auto s = OpenOrDie(o);
  for (uint64_t i = 0; i < 20; ++i) ASSERT_TRUE(PutKey(*s, i).ok());
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while ((s->Stats().memory_only_pages > 0 || s->Stats().checkpoints == 0) &&
         std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const StoreStats st = s->Stats();
  EXPECT_EQ(st.memory_only_pages, 0u);
  EXPECT_GE(st.checkpoints, 1u);
  EXPECT_EQ(st.checkpoint_failures, 0u);
  EXPECT_NE(st.last_checkpoint_start, absl::InfinitePast());
  for (uint64_t i = 0; i < 20; ++i) EXPECT_TRUE(CheckKey(*s, i).ok()) << i;
}

// Holds SSD batch writes while closed (a checkpoint's pages stay held by its batch meanwhile).
class GateSsdEnv : public SsdEnv {
 public:
  absl::Status BeforeWrite(absl::Span<std::string>) override {
    absl::MutexLock l(&mu_);
    entered_ = true;
    mu_.Await(absl::Condition(this, &GateSsdEnv::IsOpen));
    return absl::OkStatus();
  }
  void Close() {
    absl::MutexLock l(&mu_);
    closed_ = true;
    entered_ = false;
  }
  void AwaitEntered() {
    absl::MutexLock l(&mu_);
    mu_.Await(absl::Condition(&entered_));
  }
  // Opens the gate `after` from now, on a thread of its own (join it).
  std::thread OpenAfter(absl::Duration after) {
    return std::thread([this, after] {
      absl::SleepFor(after);
      absl::MutexLock l(&mu_);
      closed_ = false;
    });
  }

 private:
  bool IsOpen() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !closed_; }
  absl::Mutex mu_;
  bool entered_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

// A tenant at its host quota whose every host page a checkpoint batch is writing: a put (which
// must evict one of them) and a zero-copy read of its SSD page (which must promote it) wait for
// the batch instead of being refused with "over its host quota".
TEST(CheckpointTest, RoomHeldByACheckpointIsWaitedForNotRefused) {
  TempDir dir;
  GateSsdEnv gate;
  StoreOptions o = SmallStoreOptions(64, dir.path());
  o.ssd_env = &gate;
  o.tenant_quotas["t"].tier_bytes[static_cast<int>(Tier::kHost)] = 4 * SmallLayout().PageBytes();
  auto s = OpenOrDie(o);
  for (uint64_t i = 0; i < 5; ++i) ASSERT_TRUE(PutKey(*s, i).ok());  // page 0 evicted to SSD
  ASSERT_EQ(s->Stats().memory_only_pages, 4u);

  // A put at the quota while the checkpoint holds pages 1-4.
  gate.Close();
  std::thread checkpoint([&] { EXPECT_TRUE(s->Checkpoint().ok()); });
  gate.AwaitEntered();
  std::thread opener = gate.OpenAfter(absl::Milliseconds(300));
  EXPECT_TRUE(PutKey(*s, 5).ok());
  opener.join();
  checkpoint.join();

  // A zero-copy read of page 0 (on SSD) while a checkpoint holds every host page of the tenant
  // (only pages without an SSD copy are in a batch: pages 2-4 are written again first).
  for (uint64_t i = 2; i < 5; ++i) {
    ASSERT_TRUE(s->Remove("t", TestKey(i)).ok());
    ASSERT_TRUE(PutKey(*s, i).ok());
  }
  ASSERT_EQ(s->Stats().memory_only_pages, 4u);
  gate.Close();
  checkpoint = std::thread([&] { EXPECT_TRUE(s->Checkpoint().ok()); });
  gate.AwaitEntered();
  opener = gate.OpenAfter(absl::Milliseconds(300));
  absl::StatusOr<ReadLease> lease = s->AcquireRead("t", TestKey(0));
  EXPECT_TRUE(lease.ok()) << lease.status();
  opener.join();
  checkpoint.join();
  if (lease.ok()) {
    EXPECT_EQ(lease->found_in, Tier::kSsd);
    EXPECT_TRUE(s->ReleaseRead(lease->lease_id).ok());
  }
  for (uint64_t i = 0; i < 6; ++i) EXPECT_TRUE(CheckKey(*s, i).ok()) << i;
}

TEST(CheckpointTest, CopiesCountAgainstSsdCapacity) {
  TempDir dir;
  StoreOptions o = SmallStoreOptions(64, dir.path());
  o.ssd_capacity_bytes = 32 * SmallLayout().PageBytes();  // segments of 2 pages
  auto s = OpenOrDie(o);
  // 20 old pages on SSD (ten batches), then 24 new ones in memory: their copies push the oldest
  // SSD pages out, and disk use stays within the capacity.
  for (uint64_t i = 0; i < 20; ++i) ASSERT_TRUE(PutKey(*s, i).ok());
  for (uint64_t i = 0; i < 20; i += 2) ASSERT_TRUE(s->Demote("t", Keys(i, i + 2), Tier::kSsd).ok());
  for (uint64_t i = 20; i < 44; ++i) ASSERT_TRUE(PutKey(*s, i).ok());
  auto r = s->Checkpoint();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->pages_written, 24u);
  const StoreStats st = s->Stats();
  EXPECT_LE(st.ssd_disk_bytes, o.ssd_capacity_bytes);
  EXPECT_GE(st.dropped, 12u);
  for (uint64_t i = 20; i < 44; ++i) EXPECT_TRUE(CheckKey(*s, i).ok()) << i;
  // The surviving old pages are the most recently used ones, and read right.
  for (uint64_t i = 0; i < 20; ++i) {
    absl::Status c = CheckKey(*s, i);
    EXPECT_TRUE(c.ok() || absl::IsNotFound(c)) << i << ": " << c;
  }
  // More copies than the SSD tier holds at all: the rest are skipped, not an error.
  TempDir dir2;
  StoreOptions small = SmallStoreOptions(64, dir2.path());
  small.ssd_capacity_bytes = 4 * SmallLayout().PageBytes();
  auto t = OpenOrDie(small);
  for (uint64_t i = 0; i < 6; ++i) ASSERT_TRUE(PutKey(*t, i).ok());
  r = t->Checkpoint();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->pages_written, 4u);
  EXPECT_EQ(r->pages_skipped, 2u);
  EXPECT_EQ(t->Stats().memory_only_pages, 2u);
}

TEST(CheckpointTest, WithoutSsdTierIsANoOp) {
  auto s = OpenOrDie(SmallStoreOptions(16, ""));
  ASSERT_TRUE(PutKey(*s, 1).ok());
  auto r = s->Checkpoint();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->pages_written, 0u);
}

}  // namespace
}  // namespace pagoda
