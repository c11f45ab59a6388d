// One trust domain per tenant in the host tier: a tenant's memfd holds its own pages only, is
// sealed against shrink and grow, and the tier's capacity still flows between tenants.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "pagoda/kvstore/store.h"
#include "test_util.h"

namespace pagoda {
namespace {

using ::pagoda::testing::PageBytesFor;
using ::pagoda::testing::SmallLayout;
using ::pagoda::testing::SmallStoreOptions;
using ::pagoda::testing::TestKey;

std::unique_ptr<Store> OpenOrDie(const StoreOptions& o) {
  auto s = Store::Open(o);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? std::move(*s) : nullptr;
}

absl::Status PutKey(Store& s, std::string_view tenant, uint64_t i) {
  const PageKey k = TestKey(i);
  return s.Put(tenant, k, SmallLayout(), PageBytesFor(SmallLayout(), tenant, k));
}

absl::Status CheckKey(Store& s, std::string_view tenant, uint64_t i) {
  std::vector<uint8_t> out(SmallLayout().PageBytes());
  auto info = s.Get(tenant, TestKey(i), absl::MakeSpan(out));
  if (!info.ok()) return info.status();
  if (out != PageBytesFor(SmallLayout(), tenant, TestKey(i))) {
    return absl::InternalError("WRONG BYTES");
  }
  return absl::OkStatus();
}

// Where the store keeps a page: its offset in the host arena (and in its tenant's memfd).
uint64_t OffsetOf(Store& s, std::string_view tenant, uint64_t i) {
  auto lease = s.AcquireRead(tenant, TestKey(i));
  EXPECT_TRUE(lease.ok()) << lease.status();
  if (!lease.ok()) return 0;
  (void)s.ReleaseRead(lease->lease_id);
  return lease->arena_offset;
}

struct Mapping {
  Mapping(int fd, uint64_t size) : size(size) {
    void* m = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    EXPECT_NE(m, MAP_FAILED);
    p = m == MAP_FAILED ? nullptr : static_cast<uint8_t*>(m);
  }
  ~Mapping() {
    if (p != nullptr) munmap(p, size);
  }
  uint8_t* p;
  uint64_t size;
};

TEST(TenantArenaTest, AMemfdHoldsOnlyItsTenantsPages) {
  StoreOptions o = SmallStoreOptions(32, "");
  auto s = OpenOrDie(o);
  for (uint64_t i = 0; i < 6; ++i) {
    ASSERT_TRUE(PutKey(*s, "alice", i).ok());
    ASSERT_TRUE(PutKey(*s, "bob", i).ok());  // same keys, interleaved: neighbouring slots
  }
  auto fa = s->TenantArenaFd("alice");
  auto fb = s->TenantArenaFd("bob");
  ASSERT_TRUE(fa.ok() && fb.ok());
  EXPECT_NE(*fa, *fb);
  EXPECT_EQ(*s->TenantArenaFd("alice"), *fa);  // one memfd per tenant
  const uint64_t size = s->HostArenaInfo().size;
  Mapping a(*fa, size), b(*fb, size);
  ASSERT_TRUE(a.p != nullptr && b.p != nullptr);
  const uint64_t n = SmallLayout().PageBytes();
  for (uint64_t i = 0; i < 6; ++i) {
    const uint64_t ao = OffsetOf(*s, "alice", i), bo = OffsetOf(*s, "bob", i);
    const std::vector<uint8_t> abytes = PageBytesFor(SmallLayout(), "alice", TestKey(i));
    const std::vector<uint8_t> bbytes = PageBytesFor(SmallLayout(), "bob", TestKey(i));
    // Each tenant sees its own page where the store says it is...
    EXPECT_EQ(0, memcmp(a.p + ao, abytes.data(), n));
    EXPECT_EQ(0, memcmp(b.p + bo, bbytes.data(), n));
    // ...and nothing of the other's at the other's offset.
    EXPECT_NE(0, memcmp(a.p + bo, bbytes.data(), n)) << "alice reads bob's page " << i;
    EXPECT_NE(0, memcmp(b.p + ao, abytes.data(), n)) << "bob reads alice's page " << i;
  }
  // Alice overwrites her whole memfd: bob's pages are untouched.
  memset(a.p, 0x5A, size);
  for (uint64_t i = 0; i < 6; ++i) {
    EXPECT_TRUE(CheckKey(*s, "bob", i).ok()) << i;
    // Her own pages she damaged: caught by their checksum, never served.
    EXPECT_TRUE(absl::IsDataLoss(CheckKey(*s, "alice", i))) << i;
  }
}

TEST(TenantArenaTest, MemfdIsSealedAgainstShrinkAndGrow) {
  auto s = OpenOrDie(SmallStoreOptions(16, ""));
  ASSERT_TRUE(PutKey(*s, "alice", 1).ok());
  auto fd = s->TenantArenaFd("alice");
  ASSERT_TRUE(fd.ok());
  const off_t size = static_cast<off_t>(s->HostArenaInfo().size);
  EXPECT_EQ(ftruncate(*fd, 0), -1);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(ftruncate(*fd, size * 2), -1);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(fcntl(*fd, F_GET_SEALS) & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
            F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  EXPECT_EQ(fcntl(*fd, F_ADD_SEALS, F_SEAL_WRITE), -1);  // no more seals (would block the store)
  // The store carries on (a shrunk file would have killed it with SIGBUS here).
  EXPECT_TRUE(CheckKey(*s, "alice", 1).ok());
  ASSERT_TRUE(PutKey(*s, "alice", 2).ok());
  EXPECT_TRUE(CheckKey(*s, "alice", 2).ok());
  EXPECT_TRUE(absl::IsInvalidArgument(s->TenantArenaFd("").status()));
}

TEST(TenantArenaTest, PunchedHoleIsDataLossNeverWrongBytes) {
  auto s = OpenOrDie(SmallStoreOptions(16, ""));
  ASSERT_TRUE(PutKey(*s, "alice", 1).ok());
  auto fd = s->TenantArenaFd("alice");
  ASSERT_TRUE(fd.ok());
  const uint64_t off = OffsetOf(*s, "alice", 1);
  ASSERT_EQ(fallocate(*fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off),
                      static_cast<off_t>(SmallLayout().PageBytes())),
            0);
  EXPECT_TRUE(absl::IsDataLoss(CheckKey(*s, "alice", 1)));
  EXPECT_FALSE(s->Exists("alice", TestKey(1)));  // dropped, never served
  ASSERT_TRUE(PutKey(*s, "alice", 1).ok());
  EXPECT_TRUE(CheckKey(*s, "alice", 1).ok());
}

// Segments of 4 pages, 4 segments: alice fills the tier, then bob's writes take whole segments of
// her least-recently-used pages (her newer pages stay), and the used bytes never pass capacity.
TEST(TenantArenaTest, CapacityFlowsBetweenTenantsBySegment) {
  StoreOptions o = SmallStoreOptions(16, "");
  o.segment_bytes = 4 * SmallLayout().PageBytes();
  o.watermarks[static_cast<int>(Tier::kHost)] = Watermarks{1.0, 1.0};  // evict only when full
  auto s = OpenOrDie(o);
  for (uint64_t i = 0; i < 16; ++i) ASSERT_TRUE(PutKey(*s, "alice", i).ok()) << i;
  for (uint64_t i = 0; i < 6; ++i) ASSERT_TRUE(PutKey(*s, "bob", i).ok()) << i;
  // Two segments went to bob: alice's 8 oldest pages left (no SSD tier: dropped).
  for (uint64_t i = 0; i < 8; ++i) EXPECT_FALSE(s->Exists("alice", TestKey(i))) << i;
  // A pinned page keeps its whole segment from moving: bob's next segment is the one after.
  ASSERT_TRUE(s->Pin("alice", TestKey(8)).ok());
  for (uint64_t i = 6; i < 10; ++i) ASSERT_TRUE(PutKey(*s, "bob", i).ok()) << i;
  for (uint64_t i = 0; i < 10; ++i) EXPECT_TRUE(CheckKey(*s, "bob", i).ok()) << i;
  for (uint64_t i = 8; i < 12; ++i) EXPECT_TRUE(CheckKey(*s, "alice", i).ok()) << i;
  for (uint64_t i = 12; i < 16; ++i) EXPECT_FALSE(s->Exists("alice", TestKey(i))) << i;
  const StoreStats st = s->Stats();
  EXPECT_EQ(st.tiers[static_cast<int>(Tier::kHost)].used_bytes, 14 * SmallLayout().PageBytes());
}

// PrepareHostTier gives free segments to one tenant ahead of its writes: its pages land in them,
// and another tenant still gets room (prepared segments that stay empty move). Bad calls refused.
TEST(TenantArenaTest, PreparedSegmentsServeTheirTenantAndStillFlow) {
  StoreOptions o = SmallStoreOptions(16, "");
  o.segment_bytes = 4 * SmallLayout().PageBytes();
  o.watermarks[static_cast<int>(Tier::kHost)] = Watermarks{1.0, 1.0};  // evict only when full
  auto s = OpenOrDie(o);
  const uint64_t seg = 4 * SmallLayout().PageBytes();
  auto prepared = s->PrepareHostTier("alice", SmallLayout(), 2 * seg);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  EXPECT_EQ(*prepared, 2 * seg);
  auto all = s->PrepareHostTier("alice", SmallLayout(), UINT64_MAX);  // the rest of the tier
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(*all, 2 * seg);
  EXPECT_EQ(*s->PrepareHostTier("alice", SmallLayout(), seg), 0u);  // nothing free
  for (uint64_t i = 0; i < 8; ++i) ASSERT_TRUE(PutKey(*s, "alice", i).ok()) << i;
  // Bob finds no free segment: an empty one of alice's moves to him; alice's pages stay intact.
  for (uint64_t i = 0; i < 8; ++i) ASSERT_TRUE(PutKey(*s, "bob", i).ok()) << i;
  for (uint64_t i = 0; i < 8; ++i) EXPECT_TRUE(CheckKey(*s, "alice", i).ok()) << i;
  for (uint64_t i = 0; i < 8; ++i) EXPECT_TRUE(CheckKey(*s, "bob", i).ok()) << i;
  EXPECT_TRUE(absl::IsInvalidArgument(s->PrepareHostTier("", SmallLayout(), seg).status()));
  PageLayout other = SmallLayout();
  other.head_dim *= 2;
  EXPECT_TRUE(absl::IsInvalidArgument(s->PrepareHostTier("alice", other, seg).status()));
}

// A lease-free reader's hold on the arena: while held, no segment changes owner (a write that
// needs another tenant's empty segment waits for the hold, then fails and changes nothing); a
// write that waits turns new holds away; once the hold ends it goes on, and the segment it took
// has a new generation.
TEST(TenantArenaTest, AHeldArenaKeepsEverySegmentWithItsOwner) {
  StoreOptions o = SmallStoreOptions(8, "");
  o.segment_bytes = 4 * SmallLayout().PageBytes();
  o.watermarks[static_cast<int>(Tier::kHost)] = Watermarks{1.0, 1.0};  // evict only when full
  auto s = OpenOrDie(o);
  const uint64_t seg = 4 * SmallLayout().PageBytes();
  ASSERT_EQ(*s->PrepareHostTier("alice", SmallLayout(), UINT64_MAX), 2 * seg);  // both segments
  ASSERT_TRUE(PutKey(*s, "alice", 1).ok());
  const uint64_t at = OffsetOf(*s, "alice", 1);
  const uint32_t gen[2] = {s->HostSegmentGeneration(0), s->HostSegmentGeneration(seg)};
  EXPECT_EQ(gen[0] % 2, 1u);
  EXPECT_EQ(gen[1] % 2, 1u);
  EXPECT_EQ(s->HostSegmentGeneration(at), gen[at / seg]);
  EXPECT_EQ(s->HostSegmentGeneration(s->HostArenaInfo().size), 0u);  // outside the arena

  // Bob needs alice's empty segment: not while the arena is held.
  ASSERT_TRUE(s->HoldHostArena().ok());
  absl::Status refused = PutKey(*s, "bob", 1);
  EXPECT_TRUE(absl::IsResourceExhausted(refused)) << refused;
  EXPECT_FALSE(s->Exists("bob", TestKey(1)));
  EXPECT_EQ(s->HostSegmentGeneration(0), gen[0]);
  EXPECT_EQ(s->HostSegmentGeneration(seg), gen[1]);
  EXPECT_TRUE(CheckKey(*s, "alice", 1).ok());

  // A write that waits turns new holds away; when the hold ends, it takes the segment.
  absl::Status written = absl::UnknownError("not run");
  std::thread writer([&] { written = PutKey(*s, "bob", 1); });
  absl::Status turned_away;
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (absl::Now() < give_up) {
    turned_away = s->HoldHostArena();
    if (!turned_away.ok()) break;
    s->ReleaseHostArena();
    absl::SleepFor(absl::Microseconds(200));
  }
  EXPECT_TRUE(absl::IsUnavailable(turned_away)) << turned_away;
  s->ReleaseHostArena();  // the first hold
  writer.join();
  ASSERT_TRUE(written.ok()) << written;
  EXPECT_TRUE(CheckKey(*s, "bob", 1).ok());
  EXPECT_TRUE(CheckKey(*s, "alice", 1).ok());
  const uint64_t bob_at = OffsetOf(*s, "bob", 1);
  EXPECT_NE(bob_at / seg, at / seg);
  EXPECT_EQ(s->HostSegmentGeneration(bob_at), gen[bob_at / seg] + 2);  // released, then assigned
  EXPECT_EQ(s->HostSegmentGeneration(at), gen[at / seg]);
  ASSERT_TRUE(s->HoldHostArena().ok());  // nothing waits now
  s->ReleaseHostArena();
}

// A lease-free reader holds the arena over and over while two tenants trade segments (a write
// that finds no room takes the other's empty segment): every write gets its segment (the holds are
// short, the reclaim waits them out), and the reader reads only pages whose segment still has the
// generation it saw with them, which is memory-safe (CI runs this under ASan and TSan).
TEST(TenantArenaTest, ShortHoldsNeverStarveWritesThatMoveSegments) {
  StoreOptions o = SmallStoreOptions(8, "");
  o.segment_bytes = 4 * SmallLayout().PageBytes();  // 2 segments of 4 pages
  o.watermarks[static_cast<int>(Tier::kHost)] = Watermarks{1.0, 1.0};
  auto s = OpenOrDie(o);
  std::vector<uint64_t> alice = {0, 1, 2, 3}, bob = {100, 101, 102, 103};
  for (uint64_t i : alice) ASSERT_TRUE(PutKey(*s, "alice", i).ok());
  for (uint64_t i : bob) ASSERT_TRUE(PutKey(*s, "bob", i).ok());
  struct Seen {
    uint64_t offset;
    uint32_t gen;
  };
  std::vector<Seen> seen;
  for (uint64_t i : alice) {
    const uint64_t at = OffsetOf(*s, "alice", i);
    seen.push_back({at, s->HostSegmentGeneration(at)});
  }
  const uint8_t* base = s->HostArenaInfo().base;
  std::atomic<bool> done{false};
  std::atomic<int64_t> passes{0}, reads{0}, moved{0};
  std::thread reader([&] {
    std::vector<uint8_t> copy(SmallLayout().PageBytes());
    while (!done.load()) {
      if (!s->HoldHostArena().ok()) continue;  // a segment is changing owner
      for (const Seen& x : seen) {
        if (s->HostSegmentGeneration(x.offset) != x.gen) {
          moved.fetch_add(1);
          continue;
        }
        std::memcpy(copy.data(), base + x.offset, copy.size());  // its segment kept its owner
        reads.fetch_add(1);
      }
      s->ReleaseHostArena();
      passes.fetch_add(1);
    }
  });
  // Each round one tenant's pages all leave and the other writes 4 new ones, taking the emptied
  // segment when its own are full.
  uint64_t next = 1000;
  for (int round = 0; round < 20; ++round) {
    std::vector<uint64_t>& leaving = round % 2 == 0 ? alice : bob;
    std::vector<uint64_t>& writing = round % 2 == 0 ? bob : alice;
    const char* from = round % 2 == 0 ? "alice" : "bob";
    const char* to = round % 2 == 0 ? "bob" : "alice";
    for (uint64_t i : leaving) ASSERT_TRUE(s->Remove(from, TestKey(i)).ok());
    leaving.clear();
    for (int j = 0; j < 4; ++j, ++next) {
      absl::Status put = PutKey(*s, to, next);
      ASSERT_TRUE(put.ok()) << "round " << round << ": " << put;
      writing.push_back(next);
    }
  }
  const int64_t after = passes.load();
  while (passes.load() < after + 2) absl::SleepFor(absl::Microseconds(50));
  done.store(true);
  reader.join();
  for (uint64_t i : alice) EXPECT_TRUE(CheckKey(*s, "alice", i).ok()) << i;
  for (uint64_t i : bob) EXPECT_TRUE(CheckKey(*s, "bob", i).ok()) << i;
  // The segment alice's first pages were in changed owner, and the reader saw it.
  EXPECT_NE(s->HostSegmentGeneration(seen[0].offset), seen[0].gen);
  EXPECT_GT(moved.load(), 0);
}

// The shmem THP mode of this kernel: "advise" / "always" let the arena take huge pages.
std::string ShmemThpMode() {
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
  std::string all;
  std::getline(f, all);
  const size_t open = all.find('['), close = all.find(']');
  return open == std::string::npos || close == std::string::npos
             ? ""
             : all.substr(open + 1, close - open - 1);
}

// ShmemPmdMapped (kB) of the mapping that contains `p` in /proc/self/smaps.
int64_t ShmemPmdMappedKb(const void* p) {
  std::ifstream f("/proc/self/smaps");
  std::string line;
  bool inside = false;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  while (std::getline(f, line)) {
    uintptr_t lo = 0, hi = 0;
    char dash = 0;
    std::istringstream head(line);
    if (head >> std::hex >> lo >> dash >> hi && dash == '-') {
      inside = lo <= a && a < hi;
      continue;
    }
    if (inside && line.rfind("ShmemPmdMapped:", 0) == 0) {
      return std::stoll(line.substr(15));
    }
  }
  return -1;
}

TEST(TenantArenaTest, TheArenaIsHugePageAlignedAndTakesHugePagesWhereTheKernelAllows) {
  // 4 MiB segments: two whole 2 MiB pages each.
  constexpr uint64_t kSeg = uint64_t{4} << 20;
  StoreOptions o = SmallStoreOptions(1, "");
  o.segment_bytes = kSeg;
  o.host_capacity_bytes = 4 * kSeg;
  auto s = OpenOrDie(o);
  const HostArena arena = s->HostArenaInfo();
  EXPECT_EQ(reinterpret_cast<uintptr_t>(arena.base) % (uint64_t{2} << 20), 0u);
  ASSERT_TRUE(PutKey(*s, "alice", 1).ok());
  ASSERT_TRUE(CheckKey(*s, "alice", 1).ok());  // bytes as written, whatever the pages
  const std::string mode = ShmemThpMode();
  if (mode != "advise" && mode != "always") {
    GTEST_SKIP() << "shmem THP is '" << mode << "' here: small pages (checked bytes only)";
  }
  // The segment was faulted in at assignment, with huge pages.
  EXPECT_GT(ShmemPmdMappedKb(arena.base + OffsetOf(*s, "alice", 1)), 0);
}

}  // namespace
}  // namespace pagoda
