// The SSD tier under real RocksDB in a temp dir: restart recovery, corruption on disk, the fault
// seam (failed writes and syncs, corrupting device).
#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pagoda/kvstore/store.h"
#include "ssd_tier.h"
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

absl::Status PutKey(Store& s, std::string_view tenant, uint64_t i) {
  auto bytes = PageBytesFor(SmallLayout(), tenant, TestKey(i));
  return s.Put(tenant, TestKey(i), SmallLayout(), bytes);
}

// OK only with exactly the right bytes; the error of Get otherwise; Internal for wrong bytes.
absl::Status CheckKey(Store& s, std::string_view tenant, uint64_t i) {
  std::vector<uint8_t> out(SmallLayout().PageBytes());
  auto info = s.Get(tenant, TestKey(i), absl::MakeSpan(out));
  if (!info.ok()) return info.status();
  if (out != PageBytesFor(SmallLayout(), tenant, TestKey(i))) {
    return absl::InternalError("WRONG BYTES SERVED");
  }
  return absl::OkStatus();
}

absl::Status DemoteAll(Store& s, std::string_view tenant, int n) {
  std::vector<PageKey> keys;
  for (int i = 0; i < n; ++i) keys.push_back(TestKey(i));
  auto moved = s.Demote(tenant, keys, Tier::kSsd);
  return moved.ok() ? absl::OkStatus() : moved.status();
}

TEST(SsdTest, RestartRecoversSsdPagesAndTenants) {
  TempDir dir;
  const StoreOptions o = SmallStoreOptions(64, dir.path());
  {
    auto s = OpenOrDie(o);
    for (int i = 0; i < 20; ++i) ASSERT_TRUE(PutKey(*s, "alice", i).ok());
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(PutKey(*s, "bob", i).ok());
    ASSERT_TRUE(DemoteAll(*s, "alice", 15).ok());
    ASSERT_TRUE(DemoteAll(*s, "bob", 5).ok());
    EXPECT_EQ(s->Stats().tiers[2].pages, 20u);
  }
  auto s = OpenOrDie(o);
  const StoreStats st = s->Stats();
  EXPECT_EQ(st.tiers[2].pages, 20u);  // host pages were a cache: gone; SSD pages are back
  EXPECT_EQ(st.tiers[2].used_bytes, 20 * SmallLayout().PageBytes());
  for (int i = 0; i < 15; ++i) EXPECT_TRUE(CheckKey(*s, "alice", i).ok()) << i;
  for (int i = 15; i < 20; ++i) EXPECT_FALSE(s->Exists("alice", TestKey(i))) << i;
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(CheckKey(*s, "bob", i).ok()) << i;
  EXPECT_FALSE(s->Exists("carol", TestKey(0)));
  // New tenants after a restart get new ids, never an old tenant's pages.
  ASSERT_TRUE(PutKey(*s, "carol", 0).ok());
  EXPECT_TRUE(CheckKey(*s, "carol", 0).ok());
  EXPECT_TRUE(CheckKey(*s, "bob", 0).ok());
}

TEST(SsdTest, PromotedPagesLeaveSsdAndRestartDoesNotResurrectRemovedPages) {
  TempDir dir;
  const StoreOptions o = SmallStoreOptions(64, dir.path());
  {
    auto s = OpenOrDie(o);
    for (int i = 0; i < 6; ++i) ASSERT_TRUE(PutKey(*s, "t", i).ok());
    ASSERT_TRUE(DemoteAll(*s, "t", 6).ok());
    ASSERT_TRUE(s->Remove("t", TestKey(0)).ok());
    ASSERT_TRUE(CheckKey(*s, "t", 1).ok());  // promoted to host: no longer on SSD
  }
  auto s = OpenOrDie(o);
  EXPECT_FALSE(s->Exists("t", TestKey(0)));
  EXPECT_FALSE(s->Exists("t", TestKey(1)));
  for (int i = 2; i < 6; ++i) EXPECT_TRUE(CheckKey(*s, "t", i).ok()) << i;
}

// Flips bytes in the middle of every blob file under dir; returns how many files it touched.
int CorruptBlobFiles(const std::string& dir) {
  int n = 0;
  for (const auto& f : std::filesystem::directory_iterator(dir)) {
    if (f.path().extension() != ".blob") continue;
    std::fstream io(f.path(), std::ios::in | std::ios::out | std::ios::binary);
    const auto size = std::filesystem::file_size(f.path());
    // Hit many records: every 1 KiB from 10% to 90% of the file.
    for (uint64_t off = size / 10; off < size * 9 / 10; off += 1024) {
      io.seekg(static_cast<std::streamoff>(off));
      char c;
      io.read(&c, 1);
      c ^= 0x40;
      io.seekp(static_cast<std::streamoff>(off));
      io.write(&c, 1);
    }
    ++n;
  }
  return n;
}

TEST(SsdTest, CorruptRecordOnDiskIsDetectedDroppedAndNeverServed) {
  TempDir dir;
  const StoreOptions o = SmallStoreOptions(64, dir.path());
  constexpr int kPages = 32;
  {
    auto s = OpenOrDie(o);
    for (int i = 0; i < kPages; ++i) ASSERT_TRUE(PutKey(*s, "t", i).ok());
    ASSERT_TRUE(DemoteAll(*s, "t", kPages).ok());
    ASSERT_TRUE(s->Flush().ok());
  }
  ASSERT_GT(CorruptBlobFiles(dir.path()), 0);
  auto s = OpenOrDie(o);
  ASSERT_EQ(s->Stats().tiers[2].pages, static_cast<uint64_t>(kPages));
  int bad = 0, good = 0;
  for (int i = 0; i < kPages; ++i) {
    absl::Status st = CheckKey(*s, "t", i);
    ASSERT_FALSE(absl::IsInternal(st)) << "page " << i << ": " << st;  // never wrong bytes
    if (st.ok()) {
      ++good;
      continue;
    }
    EXPECT_TRUE(absl::IsDataLoss(st)) << st;
    EXPECT_FALSE(s->Exists("t", TestKey(i)));  // dropped
    EXPECT_TRUE(absl::IsNotFound(CheckKey(*s, "t", i)));
    ++bad;
  }
  EXPECT_GT(bad, kPages / 2);
  EXPECT_EQ(s->Stats().checksum_failures, static_cast<uint64_t>(bad));
  EXPECT_EQ(s->Stats().pages, static_cast<uint64_t>(good));
}

// A fault seam that fails writes or syncs on demand, or corrupts bytes on their way down.
class FaultySsdEnv : public SsdEnv {
 public:
  absl::Status BeforeWrite(absl::Span<std::string> pages) override {
    ++writes;
    if (fail_writes) return absl::UnavailableError("injected write failure");
    if (corrupt) {
      for (std::string& p : pages) p[p.size() / 2] ^= 0x01;
    }
    return absl::OkStatus();
  }
  absl::Status Sync(const std::function<absl::Status()>& sync) override {
    absl::Status s = sync();  // the bytes reach RocksDB...
    if (fail_syncs) return absl::DataLossError("injected sync failure");  // ...but "fsync" fails
    return s;
  }
  bool fail_writes = false, fail_syncs = false, corrupt = false;
  int writes = 0;
};

TEST(SsdTest, FailedWritesAndSyncsLeaveNothingPartialVisible) {
  TempDir dir;
  FaultySsdEnv env;
  StoreOptions o = SmallStoreOptions(8, dir.path());
  o.ssd_env = &env;
  o.ssd_sync_writes = true;
  o.watermarks[1] = Watermarks{1.0, 1.0};
  {
    auto s = OpenOrDie(o);
    for (int i = 0; i < 8; ++i) ASSERT_TRUE(PutKey(*s, "t", i).ok());
    // Explicit demotion with failing writes, then failing syncs: pages stay in host, intact.
    for (bool sync_fault : {false, true}) {
      env.fail_writes = !sync_fault;
      env.fail_syncs = sync_fault;
      absl::Status st = DemoteAll(*s, "t", 2);
      EXPECT_FALSE(st.ok());
      for (int i = 0; i < 8; ++i) {
        EXPECT_TRUE(CheckKey(*s, "t", i).ok()) << i;
        EXPECT_EQ(s->Stat("t", TestKey(i))->tier, Tier::kHost);
      }
    }
    // A full host whose eviction cannot write refuses the new page and keeps the old ones.
    absl::Status st = PutKey(*s, "t", 100);
    EXPECT_FALSE(st.ok());
    EXPECT_FALSE(s->Exists("t", TestKey(100)));
    const StoreStats stats = s->Stats();
    EXPECT_EQ(stats.pages, 8u);
    EXPECT_EQ(stats.tiers[2].pages, 0u);
    EXPECT_GE(stats.ssd_write_failures, 3u);
    for (int i = 0; i < 8; ++i) EXPECT_TRUE(CheckKey(*s, "t", i).ok()) << i;
    // Faults cleared: the same operations succeed.
    env.fail_writes = env.fail_syncs = false;
    ASSERT_TRUE(PutKey(*s, "t", 100).ok());
    ASSERT_TRUE(DemoteAll(*s, "t", 4).ok());
  }
  // After a restart only what was durably written is there: none of the failed batches.
  auto s = OpenOrDie(o);
  EXPECT_EQ(s->Stats().pages, s->Stats().tiers[2].pages);
  for (int i = 0; i < 8; ++i) {
    if (s->Exists("t", TestKey(i))) {
      EXPECT_TRUE(CheckKey(*s, "t", i).ok()) << i;
    }
  }
  for (int i = 1; i < 4; ++i) EXPECT_TRUE(CheckKey(*s, "t", i).ok()) << i;  // demoted after clear
}

TEST(SsdTest, DeviceThatCorruptsBytesIsCaughtByThePageChecksum) {
  TempDir dir;
  FaultySsdEnv env;
  env.corrupt = true;  // RocksDB stores (and checksums) bytes that are already wrong
  StoreOptions o = SmallStoreOptions(8, dir.path());
  o.ssd_env = &env;
  auto s = OpenOrDie(o);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(PutKey(*s, "t", i).ok());
  ASSERT_TRUE(DemoteAll(*s, "t", 4).ok());
  for (int i = 0; i < 4; ++i) {
    absl::Status st = CheckKey(*s, "t", i);
    EXPECT_TRUE(absl::IsDataLoss(st)) << st;
    EXPECT_FALSE(s->Exists("t", TestKey(i)));
  }
  // Zero-copy reads refuse them too.
  ASSERT_TRUE(PutKey(*s, "t", 9).ok());
  PageKey k = TestKey(9);
  ASSERT_TRUE(s->Demote("t", {&k, 1}, Tier::kSsd).ok());
  EXPECT_TRUE(absl::IsDataLoss(s->AcquireRead("t", k).status()));
  EXPECT_EQ(s->Stats().checksum_failures, 5u);
  EXPECT_EQ(s->Stats().pages, 0u);
}

TEST(SsdTest, RebuildDropsRecordsThatCannotBeServed) {
  TempDir dir;
  const StoreOptions o = SmallStoreOptions(8, dir.path());
  {
    auto s = OpenOrDie(o);
    ASSERT_TRUE(PutKey(*s, "t", 0).ok());
    ASSERT_TRUE(DemoteAll(*s, "t", 1).ok());
  }
  {
    // Metadata without page bytes, with an undecodable layout, with a wrong size, of an unknown
    // tenant: written straight into the SSD tier's metadata.
    auto ssd = SsdTier::Open(dir.path(), nullptr, false);
    ASSERT_TRUE(ssd.ok()) << ssd.status();
    const uint32_t tenant = 0;  // "t" was the first tenant
    std::vector<SsdPageMeta> metas = {
        {tenant, TestKey(1), SmallLayout().Id(), static_cast<uint32_t>(SmallLayout().PageBytes()),
         123},
        {tenant, TestKey(2), 0, 4096, 1},
        {tenant, TestKey(3), SmallLayout().Id(), 77, 1},
        {99, TestKey(4), SmallLayout().Id(), static_cast<uint32_t>(SmallLayout().PageBytes()), 1}};
    ASSERT_TRUE((*ssd)->WriteMetaOnlyForBench(metas).ok());
    ASSERT_TRUE((*ssd)->Flush().ok());
  }
  auto s = OpenOrDie(o);
  EXPECT_TRUE(CheckKey(*s, "t", 0).ok());
  for (int i : {2, 3}) EXPECT_FALSE(s->Exists("t", TestKey(i)));
  EXPECT_EQ(s->Stats().checksum_failures, 3u);
  // The record without bytes is found when read.
  EXPECT_TRUE(absl::IsDataLoss(CheckKey(*s, "t", 1)));
  EXPECT_FALSE(s->Exists("t", TestKey(1)));
}

TEST(SsdTest, SsdCapacityEvictsByDeletion) {
  TempDir dir;
  StoreOptions o = SmallStoreOptions(4, dir.path());
  o.ssd_capacity_bytes = 4 * SmallLayout().PageBytes();
  o.watermarks[2] = Watermarks{1.0, 0.5};
  auto s = OpenOrDie(o);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(PutKey(*s, "t", i).ok());
  ASSERT_TRUE(DemoteAll(*s, "t", 4).ok());
  ASSERT_TRUE(PutKey(*s, "t", 4).ok());
  PageKey k = TestKey(4);
  ASSERT_TRUE(s->Demote("t", {&k, 1}, Tier::kSsd).ok());  // 5 > 4: SSD drops LRU down to 2
  const StoreStats st = s->Stats();
  EXPECT_EQ(st.tiers[2].pages, 2u);
  EXPECT_EQ(st.dropped, 3u);
  EXPECT_TRUE(CheckKey(*s, "t", 4).ok());
}

}  // namespace
}  // namespace pagoda
