// The SSD tier on real files in a temp dir (segment files + RocksDB metadata): restart recovery,
// corruption and truncation on disk, crashes between bytes and metadata, the fault seam (failed
// writes and syncs, corrupting device), a full file system, segment unlink and compaction (with
// damaged metadata records too), and refusing an older on-disk format.
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pagoda/kvstore/store.h"
#include "rocksdb/db.h"
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

TEST(SsdTest, PromotedPagesKeepTheirSsdCopyAndRestartDoesNotResurrectRemovedPages) {
  TempDir dir;
  const StoreOptions o = SmallStoreOptions(64, dir.path());
  {
    auto s = OpenOrDie(o);
    for (int i = 0; i < 6; ++i) ASSERT_TRUE(PutKey(*s, "t", i).ok());
    ASSERT_TRUE(DemoteAll(*s, "t", 6).ok());
    ASSERT_TRUE(s->Remove("t", TestKey(0)).ok());
    ASSERT_TRUE(CheckKey(*s, "t", 1).ok());  // promoted to host, its SSD record kept
    ASSERT_EQ(s->Stat("t", TestKey(1))->tier, Tier::kHost);
    ASSERT_TRUE(CheckKey(*s, "t", 2).ok());
    ASSERT_TRUE(s->Remove("t", TestKey(2)).ok());  // a promoted page removed: its record goes
  }
  auto s = OpenOrDie(o);
  EXPECT_FALSE(s->Exists("t", TestKey(0)));
  EXPECT_FALSE(s->Exists("t", TestKey(2)));
  EXPECT_TRUE(CheckKey(*s, "t", 1).ok()) << "a promotion must not cost a page its SSD copy";
  for (int i = 3; i < 6; ++i) EXPECT_TRUE(CheckKey(*s, "t", i).ok()) << i;
}

// A batch of leases over pages on SSD promotes each into the host tier and holds it; once the
// host tier is all leased pages, the rest of the batch fails clearly (each key on its own), and
// after the release the same keys lease fine. Every lease points at the page's own bytes.
TEST(SsdTest, BatchedLeasesPromoteUntilTheHostIsAllLeased) {
  TempDir dir;
  auto s = OpenOrDie(SmallStoreOptions(4, dir.path()));
  std::vector<PageKey> keys;
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(PutKey(*s, "t", i).ok());
    keys.push_back(TestKey(i));
  }
  ASSERT_TRUE(DemoteAll(*s, "t", 8).ok());
  auto check = [&](const absl::StatusOr<ReadLease>& l) {
    const uint8_t* p = s->HostArenaInfo().base + l->arena_offset;
    EXPECT_EQ(PageChecksum(p, l->size), l->checksum);
  };
  auto first = s->AcquireReads("t", keys);
  std::vector<uint64_t> ids;
  int leased = 0;
  for (const auto& l : first) {
    if (l.ok()) {
      ++leased;
      check(l);
      ids.push_back(l->lease_id);
    } else {
      EXPECT_EQ(l.status().code(), absl::StatusCode::kResourceExhausted) << l.status();
    }
  }
  EXPECT_EQ(leased, 4) << "the host tier holds four pages, all leased";
  ASSERT_TRUE(s->ReleaseReads(ids).ok());
  ids.clear();
  std::vector<PageKey> rest;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (!first[i].ok()) rest.push_back(keys[i]);
  }
  for (const auto& l : s->AcquireReads("t", rest)) {
    ASSERT_TRUE(l.ok()) << l.status();
    check(l);
    ids.push_back(l->lease_id);
  }
  EXPECT_TRUE(s->ReleaseReads(ids).ok());
  for (int i = 0; i < 8; ++i) EXPECT_TRUE(CheckKey(*s, "t", i).ok()) << i;
}

// Flips bytes in the middle of every segment file under dir; returns how many files it touched.
int CorruptSegmentFiles(const std::string& dir) {
  int n = 0;
  for (const auto& f : std::filesystem::recursive_directory_iterator(dir)) {
    if (f.path().extension() != ".seg") continue;
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
  ASSERT_GT(CorruptSegmentFiles(dir.path()), 0);
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

// ---- The segment files, through SsdTier directly -----------------------------------------------

namespace fs = std::filesystem;
constexpr uint32_t kPage = 4096;

std::string TierBytes(uint64_t i) {
  std::string s(kPage, '\0');
  uint64_t x = i * 0x9E3779B97F4A7C15ULL + 1;
  for (char& c : s) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    c = static_cast<char>(x >> 56);
  }
  return s;
}

absl::Status WriteKeys(SsdTier& t, uint64_t first, uint64_t count) {
  std::vector<std::string> bytes;
  std::vector<SsdPageWrite> writes;
  for (uint64_t i = first; i < first + count; ++i) bytes.push_back(TierBytes(i));
  for (uint64_t i = 0; i < count; ++i) {
    SsdPageWrite w;
    w.meta = {0, TestKey(first + i), SmallLayout().Id(), kPage, first + i};
    w.bytes = reinterpret_cast<const uint8_t*>(bytes[i].data());
    writes.push_back(w);
  }
  return t.WriteBatch(writes, {});
}

// OK only with exactly the right bytes; Internal for wrong bytes.
absl::Status CheckTierKey(SsdTier& t, uint64_t i) {
  std::string out;
  if (absl::Status s = t.Read(0, TestKey(i), &out); !s.ok()) return s;
  return out == TierBytes(i) ? absl::OkStatus() : absl::InternalError("WRONG BYTES");
}

absl::Status DeleteKeys(SsdTier& t, uint64_t first, uint64_t count) {
  std::vector<std::pair<uint32_t, PageKey>> keys;
  for (uint64_t i = first; i < first + count; ++i) keys.emplace_back(0, TestKey(i));
  return t.Delete(keys);
}

std::vector<fs::path> SegmentFiles(const std::string& dir) {
  std::vector<fs::path> out;
  for (const auto& f : fs::directory_iterator(dir + "/segments")) {
    if (f.path().extension() == ".seg") out.push_back(f.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

uint64_t TotalSegmentBytes(const std::string& dir) {
  uint64_t n = 0;
  for (const fs::path& p : SegmentFiles(dir)) n += fs::file_size(p);
  return n;
}

std::unique_ptr<SsdTier> OpenTier(const std::string& dir, SsdTierOptions o = {}) {
  auto t = SsdTier::Open(dir, o);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(*t) : nullptr;
}

TEST(SsdSegmentTest, RoundTripAndRestart) {
  TempDir dir;
  for (bool direct : {false, true}) {
    const std::string d = dir.Sub(direct ? "direct" : "buffered");
    SsdTierOptions o;
    o.segment_bytes = 16 * kPage;
    o.direct_writes = direct;
    {
      auto t = OpenTier(d, o);
      for (uint64_t b = 0; b < 10; ++b) ASSERT_TRUE(WriteKeys(*t, b * 5, 5).ok());
      for (uint64_t i = 0; i < 50; ++i) ASSERT_TRUE(CheckTierKey(*t, i).ok()) << i;
      EXPECT_TRUE(absl::IsNotFound(CheckTierKey(*t, 50)));
      const SsdTier::SpaceUsage u = t->Space();
      EXPECT_EQ(u.live_bytes, 50u * kPage);
      EXPECT_EQ(u.file_bytes, 50u * kPage);  // page-multiple batches need no padding
      EXPECT_EQ(u.segments, 4u);             // 15 pages a segment: 3 batches of 5
      // A batch is one append: its pages sit back to back in one file.
      EXPECT_EQ(SegmentFiles(d).size(), 4u);
    }
    auto t = OpenTier(d, o);
    for (uint64_t i = 0; i < 50; ++i) ASSERT_TRUE(CheckTierKey(*t, i).ok()) << i;
    EXPECT_EQ(t->Space().live_bytes, 50u * kPage);
    // A new active segment after the restart; old pages stay readable beside new ones.
    ASSERT_TRUE(WriteKeys(*t, 100, 3).ok());
    EXPECT_EQ(SegmentFiles(d).size(), 5u);
    for (uint64_t i : {0, 49, 100, 102}) EXPECT_TRUE(CheckTierKey(*t, i).ok()) << i;
  }
}

TEST(SsdSegmentTest, CrashBetweenBytesAndMetadataLeavesNothingVisibleAndSpaceComesBack) {
  TempDir dir;
  SsdTierOptions o;
  o.compact_dead_fraction = 2;  // this test watches plain unlinking
  {
    auto t = OpenTier(dir.path(), o);
    ASSERT_TRUE(WriteKeys(*t, 0, 4).ok());
  }
  // What a crash after the append and before the metadata commit leaves: bytes at the tail of a
  // segment, and a whole segment of bytes that no record points to.
  const std::vector<fs::path> files = SegmentFiles(dir.path());
  ASSERT_EQ(files.size(), 1u);
  {
    std::ofstream tail(files[0], std::ios::app | std::ios::binary);
    tail << TierBytes(4) << TierBytes(5);
    std::ofstream stray(dir.Sub("segments/7.seg"), std::ios::binary);
    stray << TierBytes(6);
  }
  auto t = OpenTier(dir.path(), o);
  EXPECT_FALSE(fs::exists(dir.Sub("segments/7.seg")));  // unreferenced: deleted at open
  for (uint64_t i = 0; i < 4; ++i) EXPECT_TRUE(CheckTierKey(*t, i).ok()) << i;
  for (uint64_t i = 4; i < 7; ++i) EXPECT_TRUE(absl::IsNotFound(CheckTierKey(*t, i))) << i;
  SsdTier::SpaceUsage u = t->Space();
  EXPECT_EQ(u.live_bytes, 4u * kPage);
  EXPECT_EQ(u.file_bytes, 6u * kPage);  // the torn tail is dead space...
  ASSERT_TRUE(DeleteKeys(*t, 0, 4).ok());
  EXPECT_TRUE(SegmentFiles(dir.path()).empty());  // ...returned with the segment
  u = t->Space();
  EXPECT_EQ(u.segments, 0u);
  EXPECT_EQ(u.file_bytes, 0u);
  // New ids never reuse the deleted stray's id.
  ASSERT_TRUE(WriteKeys(*t, 10, 1).ok());
  ASSERT_EQ(SegmentFiles(dir.path()).size(), 1u);
  EXPECT_EQ(SegmentFiles(dir.path())[0].filename(), "8.seg");
}

TEST(SsdSegmentTest, TruncatedOrMissingSegmentIsDataLossNeverWrongBytes) {
  TempDir dir;
  SsdTierOptions o;
  o.segment_bytes = 8 * kPage;
  {
    auto t = OpenTier(dir.path(), o);
    for (uint64_t b = 0; b < 4; ++b) ASSERT_TRUE(WriteKeys(*t, b * 8, 8).ok());
  }
  const std::vector<fs::path> files = SegmentFiles(dir.path());
  ASSERT_EQ(files.size(), 4u);
  fs::resize_file(files[0], 3 * kPage + 100);  // pages 0-2 whole, 3 torn, 4-7 gone
  fs::remove(files[1]);                        // pages 8-15 gone
  auto t = OpenTier(dir.path(), o);
  for (uint64_t i = 0; i < 32; ++i) {
    absl::Status s = CheckTierKey(*t, i);
    if (i < 3 || i >= 16) {
      EXPECT_TRUE(s.ok()) << i << ": " << s;
    } else {
      EXPECT_TRUE(absl::IsDataLoss(s)) << i << ": " << s;
    }
  }
}

TEST(SsdSegmentTest, TruncatedSegmentUnderTheStoreIsDroppedNeverServed) {
  TempDir dir;
  const StoreOptions o = SmallStoreOptions(64, dir.path());
  constexpr int kPages = 32;
  {
    auto s = OpenOrDie(o);
    for (int i = 0; i < kPages; ++i) ASSERT_TRUE(PutKey(*s, "t", i).ok());
    ASSERT_TRUE(DemoteAll(*s, "t", kPages).ok());
  }
  const std::vector<fs::path> files = SegmentFiles(dir.path());
  ASSERT_EQ(files.size(), 1u);
  fs::resize_file(files[0], fs::file_size(files[0]) / 2 + 1000);
  auto s = OpenOrDie(o);
  int good = 0;
  for (int i = 0; i < kPages; ++i) {
    absl::Status st = CheckKey(*s, "t", i);
    ASSERT_FALSE(absl::IsInternal(st)) << i;
    if (st.ok()) {
      ++good;
    } else {
      EXPECT_TRUE(absl::IsDataLoss(st)) << i << ": " << st;
      EXPECT_FALSE(s->Exists("t", TestKey(i)));
    }
  }
  EXPECT_EQ(good, kPages / 2);
}

// A fault seam for the tier alone: fails the sync that comes between bytes and metadata.
class FailSyncEnv : public SsdEnv {
 public:
  absl::Status Sync(const std::function<absl::Status()>& sync) override {
    if (fail) return absl::UnavailableError("injected sync failure");
    return sync();
  }
  bool fail = false;
};

TEST(SsdSegmentTest, FullDiskOrFailedSyncTruncatesBackAndChangesNothing) {
  TempDir dir;
  FailSyncEnv env;
  SsdTierOptions o;
  o.env = &env;
  o.sync_writes = true;
  auto t = OpenTier(dir.path(), o);
  ASSERT_TRUE(WriteKeys(*t, 0, 4).ok());
  const uint64_t before = TotalSegmentBytes(dir.path());
  ASSERT_EQ(before, 4u * kPage);

  // A real short write: the file-size limit lets 1.5 pages of the batch down, then EFBIG (what a
  // full disk looks like to the writer: a short write, then an error).
  struct rlimit old;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  signal(SIGXFSZ, SIG_IGN);
  struct rlimit lim = old;
  lim.rlim_cur = before + kPage + kPage / 2;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &lim), 0);
  absl::Status full = WriteKeys(*t, 10, 4);
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &old), 0);
  EXPECT_TRUE(absl::IsResourceExhausted(full)) << full;
  EXPECT_EQ(TotalSegmentBytes(dir.path()), before);  // truncated back

  // The sync between bytes and metadata fails: the same.
  env.fail = true;
  EXPECT_FALSE(WriteKeys(*t, 20, 4).ok());
  env.fail = false;
  EXPECT_EQ(TotalSegmentBytes(dir.path()), before);

  for (uint64_t i : {10, 13, 20, 23}) EXPECT_TRUE(absl::IsNotFound(CheckTierKey(*t, i))) << i;
  for (uint64_t i = 0; i < 4; ++i) EXPECT_TRUE(CheckTierKey(*t, i).ok()) << i;
  EXPECT_EQ(t->Space().live_bytes, 4u * kPage);
  // The tail is usable again: the next batch lands where the failed ones would have.
  ASSERT_TRUE(WriteKeys(*t, 30, 2).ok());
  EXPECT_EQ(TotalSegmentBytes(dir.path()), 6u * kPage);
  for (uint64_t i : {0, 3, 30, 31}) EXPECT_TRUE(CheckTierKey(*t, i).ok()) << i;
  t.reset();
  t = OpenTier(dir.path(), o);
  for (uint64_t i : {10, 13, 20, 23}) EXPECT_TRUE(absl::IsNotFound(CheckTierKey(*t, i))) << i;
  for (uint64_t i : {0, 3, 30, 31}) EXPECT_TRUE(CheckTierKey(*t, i).ok()) << i;
}

TEST(SsdSegmentTest, SealedSegmentIsUnlinkedOnceItsPagesAreDeleted) {
  TempDir dir;
  SsdTierOptions o;
  o.segment_bytes = 4 * kPage;
  o.compact_dead_fraction = 2;  // no compaction: only unlinking
  auto t = OpenTier(dir.path(), o);
  for (uint64_t b = 0; b < 3; ++b) ASSERT_TRUE(WriteKeys(*t, b * 4, 4).ok());
  ASSERT_EQ(SegmentFiles(dir.path()).size(), 3u);  // 1, 2 sealed; 3 active
  ASSERT_TRUE(DeleteKeys(*t, 0, 3).ok());
  EXPECT_EQ(SegmentFiles(dir.path()).size(), 3u);  // one page still lives in segment 1
  ASSERT_TRUE(DeleteKeys(*t, 3, 1).ok());
  EXPECT_EQ(SegmentFiles(dir.path()).size(), 2u);
  EXPECT_FALSE(fs::exists(dir.Sub("segments/1.seg")));
  ASSERT_TRUE(DeleteKeys(*t, 8, 4).ok());  // the active segment stays while it is active
  EXPECT_TRUE(fs::exists(dir.Sub("segments/3.seg")));
  for (uint64_t i = 4; i < 8; ++i) EXPECT_TRUE(CheckTierKey(*t, i).ok()) << i;
  EXPECT_EQ(t->Space().live_bytes, 4u * kPage);
  t.reset();
  t = OpenTier(dir.path(), o);  // segment 3 had no live page: gone at open
  EXPECT_EQ(SegmentFiles(dir.path()).size(), 1u);
  for (uint64_t i = 4; i < 8; ++i) EXPECT_TRUE(CheckTierKey(*t, i).ok()) << i;
}

TEST(SsdSegmentTest, CompactionKeepsEveryLivePageByteIdentical) {
  TempDir dir;
  SsdTierOptions o;
  o.segment_bytes = 8 * kPage;
  o.compact_dead_fraction = 0.5;
  auto t = OpenTier(dir.path(), o);
  for (uint64_t b = 0; b < 8; ++b) ASSERT_TRUE(WriteKeys(*t, b * 4, 4).ok());
  // Segments 1-4 hold pages 0-7, 8-15, 16-23, 24-31; 4 is active.
  ASSERT_EQ(SegmentFiles(dir.path()).size(), 4u);
  // Deleting three pages of segment 1 leaves it 3/8 dead: kept.
  ASSERT_TRUE(DeleteKeys(*t, 0, 3).ok());
  EXPECT_TRUE(fs::exists(dir.Sub("segments/1.seg")));
  // Readers run through compaction: every OK read has the right bytes.
  std::atomic<bool> stop{false};
  std::atomic<int> wrong{0}, reads{0};
  std::thread reader([&] {
    while (!stop.load()) {
      for (uint64_t i = 4; i < 32; ++i) {
        absl::Status s = CheckTierKey(*t, i);
        if (absl::IsInternal(s) || (!s.ok() && i != 4)) wrong++;
        reads++;
      }
    }
  });
  // The reader must be running before compaction starts (a loaded machine may not schedule it).
  while (reads.load() < 28) std::this_thread::yield();
  // The fourth crosses 1/2: its live pages 4-7 move to the active segment (in the background)
  // and 1.seg goes.
  ASSERT_TRUE(DeleteKeys(*t, 3, 1).ok());
  t->WaitForCompactions();
  EXPECT_FALSE(fs::exists(dir.Sub("segments/1.seg")));
  // An explicit compaction of a segment with one page deleted.
  ASSERT_TRUE(DeleteKeys(*t, 4, 1).ok());
  ASSERT_TRUE(t->CompactSegment(2).ok());
  EXPECT_FALSE(fs::exists(dir.Sub("segments/2.seg")));
  const int after = reads.load();  // and one full pass after both compactions
  while (reads.load() < after + 28) std::this_thread::yield();
  stop = true;
  reader.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(reads.load(), 0);
  for (uint64_t i = 0; i < 5; ++i) EXPECT_TRUE(absl::IsNotFound(CheckTierKey(*t, i))) << i;
  for (uint64_t i = 5; i < 32; ++i) EXPECT_TRUE(CheckTierKey(*t, i).ok()) << i;
  const SsdTier::SpaceUsage u = t->Space();
  EXPECT_EQ(u.live_bytes, 27u * kPage);
  // Nothing dead left in sealed segments; page 4 died in the active one after it moved there.
  EXPECT_EQ(u.file_bytes, 28u * kPage);
  t.reset();
  t = OpenTier(dir.path(), o);
  for (uint64_t i = 5; i < 32; ++i) EXPECT_TRUE(CheckTierKey(*t, i).ok()) << i;
  EXPECT_EQ(t->Space().live_bytes, 27u * kPage);
}

// Raw edits of a closed tier's metadata (the on-disk format of ssd_tier.h), as a damaged disk or a
// stray writer would leave it.
void EditRecords(const std::string& dir,
                 const std::function<void(rocksdb::DB*, rocksdb::ColumnFamilyHandle* meta,
                                          rocksdb::ColumnFamilyHandle* locations)>& edit) {
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {
      {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()},
      {"meta", rocksdb::ColumnFamilyOptions()},
      {"locations", rocksdb::ColumnFamilyOptions()}};
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  ASSERT_TRUE(rocksdb::DB::Open(rocksdb::DBOptions(), dir, cfs, &handles, &db).ok());
  edit(db, handles[1], handles[2]);
  for (auto* h : handles) ASSERT_TRUE(db->DestroyColumnFamilyHandle(h).ok());
  delete db;
}

// 'P' + tenant u32 BE + key.hi u64 BE + key.lo u64 BE.
std::string MetaKey(uint32_t tenant, const PageKey& k) {
  std::string s = "P";
  for (int i = 3; i >= 0; --i) s.push_back(static_cast<char>(tenant >> (8 * i)));
  for (int i = 7; i >= 0; --i) s.push_back(static_cast<char>(k.hi >> (8 * i)));
  for (int i = 7; i >= 0; --i) s.push_back(static_cast<char>(k.lo >> (8 * i)));
  return s;
}

// Segments 1 (pages 0-3, sealed) and 2 (pages 4-7) written, the tier closed, its records edited,
// the tier reopened.
std::unique_ptr<SsdTier> DamagedTier(
    const std::string& dir, const SsdTierOptions& o,
    const std::function<void(rocksdb::DB*, rocksdb::ColumnFamilyHandle* meta,
                             rocksdb::ColumnFamilyHandle* locations)>& edit) {
  auto t = OpenTier(dir, o);
  EXPECT_TRUE(WriteKeys(*t, 0, 4).ok());
  EXPECT_TRUE(WriteKeys(*t, 4, 4).ok());
  t.reset();
  EditRecords(dir, edit);
  return OpenTier(dir, o);
}

// Pages [first, 8) read right now and after a restart, which finds `live_pages` pages' bytes live.
void ExpectPagesAcrossARestart(std::unique_ptr<SsdTier>& t, const std::string& dir,
                               const SsdTierOptions& o, uint64_t first, uint64_t live_pages) {
  for (uint64_t i = first; i < 8; ++i) EXPECT_TRUE(CheckTierKey(*t, i).ok()) << i;
  t.reset();
  t = OpenTier(dir, o);
  for (uint64_t i = first; i < 8; ++i) EXPECT_TRUE(CheckTierKey(*t, i).ok()) << i;
  EXPECT_EQ(t->Space().live_bytes, live_pages * kPage);
}

// Page 0's record damaged into a copy of page 1's (same segment, offset, size): deleting page 0
// must not take page 1's location record, so page 1 survives compaction and a restart.
TEST(SsdSegmentTest, DeletingAPageWhoseRecordPointsAtAnotherPageKeepsThatPage) {
  TempDir dir;
  SsdTierOptions o;
  o.segment_bytes = 4 * kPage;
  auto t = DamagedTier(
      dir.path(), o,
      [](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* meta, rocksdb::ColumnFamilyHandle*) {
        std::string v;
        ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), meta, MetaKey(0, TestKey(1)), &v).ok());
        ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), meta, MetaKey(0, TestKey(0)), v).ok());
      });
  EXPECT_TRUE(absl::IsInternal(CheckTierKey(*t, 0)));  // page 1's bytes: the caller's checksum
                                                       // catches it, the tier cannot
  ASSERT_TRUE(DeleteKeys(*t, 0, 1).ok());
  EXPECT_TRUE(absl::IsNotFound(CheckTierKey(*t, 0)));
  ASSERT_TRUE(t->CompactSegment(1).ok());
  EXPECT_FALSE(fs::exists(dir.Sub("segments/1.seg")));
  // Page 0's own location record counted until compaction found no page behind it.
  EXPECT_EQ(t->Space().live_bytes, 7u * kPage);
  ExpectPagesAcrossARestart(t, dir.path(), o, 1, 7);
}

// A location record naming a live page with a size of almost 4 GiB: compaction refuses the range
// before sizing a buffer by it (no gigabytes allocated on a record's say-so), drops that record
// and moves the page by its real one.
TEST(SsdSegmentTest, CompactionDoesNotAllocateByADamagedLocationRecordsSize) {
  TempDir dir;
  SsdTierOptions o;
  o.segment_bytes = 4 * kPage;
  auto t = DamagedTier(
      dir.path(), o,
      [](rocksdb::DB* db, rocksdb::ColumnFamilyHandle*, rocksdb::ColumnFamilyHandle* locations) {
        const std::string key("L\0\0\0\x01\0\0\x01\x00", 9);  // segment 1, offset 256
        std::string v = MetaKey(0, TestKey(2)).substr(1);
        const uint32_t size = 0xFFFFF000u;
        v.append(reinterpret_cast<const char*>(&size), 4);
        ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), locations, key, v).ok());
      });
  struct rusage before, after;
  getrusage(RUSAGE_SELF, &before);
  ASSERT_TRUE(t->CompactSegment(1).ok());
  getrusage(RUSAGE_SELF, &after);
  EXPECT_LT(after.ru_maxrss - before.ru_maxrss, 1L << 20) << "KiB";  // under 1 GiB more
  EXPECT_FALSE(fs::exists(dir.Sub("segments/1.seg")));
  ExpectPagesAcrossARestart(t, dir.path(), o, 0, 8);
}

// A location key of the wrong length among a segment's keys (found by fuzzing ssd_records):
// compaction skips it and still moves every page recorded after it.
TEST(SsdSegmentTest, CompactionMovesThePagesAfterAMalformedLocationKey) {
  TempDir dir;
  SsdTierOptions o;
  o.segment_bytes = 4 * kPage;
  auto t = DamagedTier(
      dir.path(), o,
      [](rocksdb::DB* db, rocksdb::ColumnFamilyHandle*, rocksdb::ColumnFamilyHandle* locations) {
        // 'L', segment 1, offset 256, 4 stray bytes: between pages 0 and 1.
        const std::string key("L\0\0\0\x01\0\0\x01\x00\x18\0\0\0", 13);
        ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), locations, key, "").ok());
      });
  ASSERT_TRUE(t->CompactSegment(1).ok());
  EXPECT_FALSE(fs::exists(dir.Sub("segments/1.seg")));
  ExpectPagesAcrossARestart(t, dir.path(), o, 0, 8);
}

TEST(SsdSegmentTest, OlderOrUnknownFormatIsRefusedWithAClearError) {
  TempDir dir;
  {
    // A version 1 directory: page bytes in a "pages" column family of blob values.
    rocksdb::Options opts;
    opts.create_if_missing = true;
    opts.create_missing_column_families = true;
    std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {
        {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()},
        {"pages", rocksdb::ColumnFamilyOptions()},
        {"meta", rocksdb::ColumnFamilyOptions()}};
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* db = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(opts, dir.Sub("v1"), cfs, &handles, &db).ok());
    for (auto* h : handles) ASSERT_TRUE(db->DestroyColumnFamilyHandle(h).ok());
    delete db;
  }
  auto v1 = SsdTier::Open(dir.Sub("v1"), SsdTierOptions());
  ASSERT_TRUE(absl::IsFailedPrecondition(v1.status())) << v1.status();
  EXPECT_THAT(std::string(v1.status().message()), ::testing::HasSubstr("format version 1"));
  EXPECT_TRUE(fs::exists(dir.Sub("v1")));
  // The store refuses it the same way.
  auto store = Store::Open(SmallStoreOptions(8, dir.Sub("v1")));
  EXPECT_TRUE(absl::IsFailedPrecondition(store.status())) << store.status();
  {
    // A newer version than this build knows.
    ASSERT_NE(OpenTier(dir.Sub("v3")), nullptr);
    rocksdb::DB* db = nullptr;
    std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {
        {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()},
        {"meta", rocksdb::ColumnFamilyOptions()},
        {"locations", rocksdb::ColumnFamilyOptions()}};
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    ASSERT_TRUE(rocksdb::DB::Open(rocksdb::DBOptions(), dir.Sub("v3"), cfs, &handles, &db).ok());
    const uint32_t v = 3;
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), "format_version",
                        rocksdb::Slice(reinterpret_cast<const char*>(&v), 4))
                    .ok());
    for (auto* h : handles) ASSERT_TRUE(db->DestroyColumnFamilyHandle(h).ok());
    delete db;
  }
  auto v3 = SsdTier::Open(dir.Sub("v3"), SsdTierOptions());
  ASSERT_TRUE(absl::IsFailedPrecondition(v3.status())) << v3.status();
  EXPECT_THAT(std::string(v3.status().message()), ::testing::HasSubstr("format version 3"));
}

}  // namespace
}  // namespace pagoda
