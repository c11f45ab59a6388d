// Durability across restarts: pages on SSD stay readable after a crash, a SIGTERM under load
// loses no page whose Put was acknowledged, pages survive many restarts with reads, prefetches and
// writes between them, and kill -9 under load keeps what the durability contract promises.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "pagodad_process.h"

namespace pagoda::testing {
namespace {

// Only 64 KiB pages, an 8 MiB host tier: most pages of a few hundred go down to SSD. `extra`:
// more store keys (e.g. "checkpoint_ms: 0"); otherwise the embedded default's durability applies.
std::string SmallHostConfig(const std::string& ssd, const std::string& extra = "") {
  return R"(
server: {grpc_host: 127.0.0.1, grpc_port: 0, http_host: 127.0.0.1, http_port: 0}
store:
  host_bytes: 8MiB
  ssd_bytes: )" +
         ssd + "\n" + (extra.empty() ? "" : "  " + extra + "\n") +
         R"(  layouts: [{dtype: fp16, kv_heads: 8, head_dim: 128, page_tokens: 16}]
)";
}

std::unique_ptr<PagodadProcess> Start(const std::string& yaml, const std::string& dir) {
  PagodadProcess::Options o;
  o.config_yaml = yaml;
  o.data_dir = dir;
  absl::StatusOr<std::unique_ptr<PagodadProcess>> p = PagodadProcess::Start(o);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? std::move(*p) : nullptr;
}

class DurabilityTest : public ::testing::TestWithParam<int> {};  // the stop signal

TEST_P(DurabilityTest, RestartKeepsSsdPagesReadable) {
  char tmpl[] = "/tmp/pgdr-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  const PageLayout l{};
  constexpr uint64_t kPages = 320;  // 20 MiB through an 8 MiB host tier
  uint64_t ssd_pages = 0;
  {
    std::unique_ptr<PagodadProcess> s = Start(SmallHostConfig("256MiB"), dir);
    ASSERT_NE(s, nullptr);
    s->KeepDataDir();
    auto c = Client::Connect(s->ClientOpts("d", DataPathKind::kAuto));
    ASSERT_TRUE(c.ok());
    for (uint64_t i = 0; i < kPages; i += 16) {
      std::vector<std::vector<uint8_t>> data;
      std::vector<PutPage> puts;
      for (uint64_t j = i; j < i + 16; ++j) data.push_back(PageBytes(PageKey{9, j}, l.PageBytes()));
      for (uint64_t j = 0; j < 16; ++j) puts.push_back({PageKey{9, i + j}, l.Id(), data[j]});
      for (const absl::Status& st : (*c)->Put(puts)) ASSERT_TRUE(st.ok()) << st;
    }
    absl::StatusOr<ServiceStats> st = (*c)->Stats();
    ASSERT_TRUE(st.ok());
    for (const TierUsage& t : st->tiers) {
      if (t.name == "ssd") ssd_pages = t.pages;
    }
    ASSERT_GT(ssd_pages, kPages / 2) << "the test needs pages on SSD";
    absl::StatusOr<int> rc = s->Stop(GetParam());
    ASSERT_TRUE(rc.ok());
    if (GetParam() == SIGTERM) {
      EXPECT_EQ(*rc, 0) << s->Log();
    }
  }
  std::unique_ptr<PagodadProcess> s = Start(SmallHostConfig("256MiB"), dir);
  ASSERT_NE(s, nullptr);
  auto c = Client::Connect(s->ClientOpts("d", DataPathKind::kAuto));
  ASSERT_TRUE(c.ok());
  uint64_t found = 0;
  std::vector<uint8_t> out(l.PageBytes());
  for (uint64_t i = 0; i < kPages; ++i) {
    GetResult r = (*c)->Get({{PageKey{9, i}, absl::MakeSpan(out)}})[0];
    if (absl::IsNotFound(r.status)) continue;  // was only in the host tier (crash case)
    ASSERT_TRUE(r.status.ok()) << i << ": " << r.status;
    EXPECT_EQ(out, PageBytes(PageKey{9, i}, l.PageBytes())) << "page " << i;
    ++found;
  }
  if (GetParam() == SIGTERM) {
    EXPECT_EQ(found, kPages) << "a graceful stop persists every acknowledged page";
  } else {
    EXPECT_GE(found, ssd_pages) << "pages that were on SSD survive a crash";
  }
  c->reset();
  s.reset();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

INSTANTIATE_TEST_SUITE_P(Stops, DurabilityTest, ::testing::Values(SIGTERM, SIGKILL),
                         [](const auto& info) {
                           return info.param == SIGTERM ? std::string("Sigterm")
                                                        : std::string("Sigkill");
                         });

TEST(SigtermUnderLoadTest, LosesNoAcknowledgedPage) {
  char tmpl[] = "/tmp/pgdl-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  const std::string yaml = SmallHostConfig("1GiB");
  const PageLayout l{};
  absl::Mutex mu;
  std::vector<PageKey> acked;
  {
    std::unique_ptr<PagodadProcess> s = Start(yaml, dir);
    ASSERT_NE(s, nullptr);
    s->KeepDataDir();
    std::atomic<int> writing{0}, interrupted{0};
    std::vector<std::thread> writers;
    for (int w = 0; w < 3; ++w) {
      writers.emplace_back([&, w] {
        auto c = Client::Connect(
            s->ClientOpts("load", w == 2 ? DataPathKind::kRemote : DataPathKind::kLocal));
        if (!c.ok()) return;
        writing++;
        for (uint64_t b = 0; b < 400; ++b) {  // at most 3200 pages (200 MiB) per writer
          std::vector<std::vector<uint8_t>> data;
          std::vector<PutPage> puts;
          for (uint64_t j = 0; j < 8; ++j) {
            data.push_back(PageBytes(PageKey{100 + uint64_t(w), b * 8 + j}, l.PageBytes()));
          }
          for (uint64_t j = 0; j < 8; ++j) {
            puts.push_back({PageKey{100 + uint64_t(w), b * 8 + j}, l.Id(), data[j]});
          }
          std::vector<absl::Status> st = (*c)->Put(puts);
          bool failed = false;
          absl::MutexLock lock(&mu);
          for (uint64_t j = 0; j < 8; ++j) {
            if (st[j].ok()) {
              acked.push_back(puts[j].key);
            } else {
              failed = true;
            }
          }
          if (failed) {  // the server is going away
            interrupted++;
            return;
          }
        }
      });
    }
    while (writing.load() < 3) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    // Stop as soon as some pages are acknowledged, while the writers are in full flow.
    for (int i = 0; i < 1000; ++i) {
      {
        absl::MutexLock lock(&mu);
        if (acked.size() >= 64) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    absl::StatusOr<int> rc = s->Stop(SIGTERM);
    for (std::thread& t : writers) t.join();
    ASSERT_TRUE(rc.ok()) << rc.status();
    EXPECT_EQ(*rc, 0) << s->Log();
    // The stop must have cut into the load, or the test proves nothing.
    EXPECT_GT(interrupted.load(), 0) << "every writer finished before the SIGTERM";
  }
  ASSERT_GT(acked.size(), 0u);
  std::printf("acknowledged pages before the stop: %zu\n", acked.size());
  std::unique_ptr<PagodadProcess> s = Start(yaml, dir);
  ASSERT_NE(s, nullptr);
  auto c = Client::Connect(s->ClientOpts("load", DataPathKind::kAuto));
  ASSERT_TRUE(c.ok());
  std::vector<uint8_t> out(l.PageBytes());
  size_t lost = 0;
  for (const PageKey& k : acked) {
    GetResult r = (*c)->Get({{k, absl::MakeSpan(out)}})[0];
    if (!r.status.ok()) {
      ++lost;
      continue;
    }
    EXPECT_EQ(out, PageBytes(k, l.PageBytes()));
  }
  EXPECT_EQ(lost, 0u) << "of " << acked.size() << " acknowledged pages";
  c->reset();
  s.reset();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

// Puts keys [from, to) of key.hi = `hi`, 16 per call; every status must be OK.
void PutRange(Client& c, uint64_t hi, uint64_t from, uint64_t to) {
  const PageLayout l{};
  for (uint64_t i = from; i < to; i += 16) {
    std::vector<std::vector<uint8_t>> data;
    std::vector<PutPage> puts;
    const uint64_t end = std::min(to, i + 16);
    for (uint64_t j = i; j < end; ++j) data.push_back(PageBytes(PageKey{hi, j}, l.PageBytes()));
    for (uint64_t j = i; j < end; ++j) puts.push_back({PageKey{hi, j}, l.Id(), data[j - i]});
    for (const absl::Status& st : c.Put(puts)) ASSERT_TRUE(st.ok()) << st;
  }
}

// Reads keys [from, to) of `hi`; each must come back byte-exact.
void ExpectRange(Client& c, uint64_t hi, uint64_t from, uint64_t to, const std::string& when) {
  const PageLayout l{};
  std::vector<uint8_t> out(l.PageBytes());
  for (uint64_t i = from; i < to; ++i) {
    GetResult r = c.Get({{PageKey{hi, i}, absl::MakeSpan(out)}})[0];
    ASSERT_TRUE(r.status.ok()) << when << ": page " << hi << "/" << i << ": " << r.status;
    ASSERT_EQ(out, PageBytes(PageKey{hi, i}, l.PageBytes())) << when << ": page " << i;
  }
}

// Issue 14: a page read (promoted), prefetched or written after a restart must survive the next
// graceful stop too, however many restarts follow. Background checkpoints are off, so the stop
// alone has to do it.
TEST(RestartsTest, EveryPageSurvivesManyRestartsWithReadsPrefetchesAndWrites) {
  char tmpl[] = "/tmp/pgdm-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  const std::string yaml = SmallHostConfig("256MiB", "checkpoint_ms: 0");
  constexpr uint64_t kFirst = 200;  // 12.5 MiB through an 8 MiB host tier
  constexpr uint64_t kPerRound = 24;
  auto stop = [&](PagodadProcess& s) {
    absl::StatusOr<int> rc = s.Stop(SIGTERM);
    ASSERT_TRUE(rc.ok()) << rc.status();
    ASSERT_EQ(*rc, 0) << s.Log();
  };
  {
    std::unique_ptr<PagodadProcess> s = Start(yaml, dir);
    ASSERT_NE(s, nullptr);
    s->KeepDataDir();
    auto c = Client::Connect(s->ClientOpts("r", DataPathKind::kAuto));
    ASSERT_TRUE(c.ok());
    PutRange(**c, 7, 0, kFirst);
    c->reset();
    stop(*s);
  }
  uint64_t written = kFirst;
  for (int round = 1; round <= 3; ++round) {
    const std::string when = "after restart " + std::to_string(round);
    std::unique_ptr<PagodadProcess> s = Start(yaml, dir);
    ASSERT_NE(s, nullptr);
    s->KeepDataDir();
    // Local and remote paths take turns.
    auto c = Client::Connect(
        s->ClientOpts("r", round % 2 ? DataPathKind::kLocal : DataPathKind::kRemote));
    ASSERT_TRUE(c.ok());
    // Reads of every page promote most of them to the host tier (and evict others back).
    ExpectRange(**c, 7, 0, written, when);
    // A prefetch into the host tier of the oldest pages.
    std::vector<PageKey> keys;
    for (uint64_t i = 0; i < 64; ++i) keys.push_back(PageKey{7, i});
    absl::StatusOr<size_t> moved = (*c)->Prefetch(keys, "host");
    ASSERT_TRUE(moved.ok()) << moved.status();
    // And new pages.
    PutRange(**c, 7, written, written + kPerRound);
    written += kPerRound;
    c->reset();
    stop(*s);
  }
  std::unique_ptr<PagodadProcess> s = Start(yaml, dir);
  ASSERT_NE(s, nullptr);
  auto c = Client::Connect(s->ClientOpts("r", DataPathKind::kAuto));
  ASSERT_TRUE(c.ok());
  ExpectRange(**c, 7, 0, written, "after the last restart");
  c->reset();
  s.reset();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

int64_t UnixMsNow() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The README's durability contract, with the default config: kill -9 under write load loses no
// page acknowledged before the start of the last complete checkpoint (pagoda_durable_before_
// unix_ms), and nothing read back after the restart is ever wrong.
TEST(CrashUnderLoadTest, KillNineKeepsEveryCheckpointedPageAndServesNothingWrong) {
  char tmpl[] = "/tmp/pgdk-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  const std::string yaml = SmallHostConfig("1GiB");  // the default checkpoint_ms
  const PageLayout l{};
  struct Acked {
    PageKey key;
    int64_t at_ms;
  };
  absl::Mutex mu;
  std::vector<Acked> acked;
  std::vector<PageKey> attempted;
  int64_t durable_before = 0;
  {
    std::unique_ptr<PagodadProcess> s = Start(yaml, dir);
    ASSERT_NE(s, nullptr);
    s->KeepDataDir();
    std::atomic<bool> stop{false};
    std::atomic<int> writing{0};
    std::vector<std::thread> writers;
    for (int w = 0; w < 3; ++w) {
      writers.emplace_back([&, w] {
        auto c = Client::Connect(
            s->ClientOpts("crash", w == 2 ? DataPathKind::kRemote : DataPathKind::kLocal));
        if (!c.ok()) return;
        writing++;
        for (uint64_t b = 0; !stop.load() && b < 4000; ++b) {
          std::vector<std::vector<uint8_t>> data;
          std::vector<PutPage> puts;
          for (uint64_t j = 0; j < 4; ++j) {
            data.push_back(PageBytes(PageKey{200 + uint64_t(w), b * 4 + j}, l.PageBytes()));
          }
          for (uint64_t j = 0; j < 4; ++j) {
            puts.push_back({PageKey{200 + uint64_t(w), b * 4 + j}, l.Id(), data[j]});
          }
          {
            absl::MutexLock lock(&mu);
            for (const PutPage& p : puts) attempted.push_back(p.key);
          }
          std::vector<absl::Status> st = (*c)->Put(puts);
          const int64_t now = UnixMsNow();
          absl::MutexLock lock(&mu);
          bool failed = false;
          for (uint64_t j = 0; j < 4; ++j) {
            if (st[j].ok()) {
              acked.push_back({puts[j].key, now});
            } else {
              failed = true;
            }
          }
          if (failed) return;  // the server is gone
        }
      });
    }
    while (writing.load() < 3) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    // Wait (under load) for a checkpoint that covers a good number of acknowledged pages.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    for (;;) {
      ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "no checkpoint covered 200 pages";
      absl::StatusOr<std::string> m = HttpGet(s->http_port(), "/metrics");
      ASSERT_TRUE(m.ok());
      const auto d = static_cast<int64_t>(MetricValue(*m, "pagoda_durable_before_unix_ms"));
      ASSERT_GE(d, 0) << "no durability metric in " << *m;
      size_t covered = 0;
      {
        absl::MutexLock lock(&mu);
        for (const Acked& a : acked) covered += a.at_ms < d;
      }
      if (covered >= 200) {
        durable_before = d;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    absl::StatusOr<int> rc = s->Stop(SIGKILL);
    ASSERT_TRUE(rc.ok());
    EXPECT_EQ(*rc, -SIGKILL);
    stop = true;
    for (std::thread& t : writers) t.join();
  }
  std::unique_ptr<PagodadProcess> s = Start(yaml, dir);
  ASSERT_NE(s, nullptr);
  auto c = Client::Connect(s->ClientOpts("crash", DataPathKind::kAuto));
  ASSERT_TRUE(c.ok());
  std::vector<uint8_t> out(l.PageBytes());
  size_t covered = 0, lost_covered = 0, found = 0;
  absl::flat_hash_set<PageKey> must;
  for (const Acked& a : acked) {
    if (a.at_ms < durable_before) must.insert(a.key);
  }
  for (const PageKey& k : attempted) {
    GetResult r = (*c)->Get({{k, absl::MakeSpan(out)}})[0];
    if (r.status.ok()) {
      ++found;
      ASSERT_EQ(out, PageBytes(k, l.PageBytes())) << "WRONG BYTES for " << k.Hex();
    } else {
      ASSERT_TRUE(absl::IsNotFound(r.status)) << k.Hex() << ": " << r.status;
    }
    if (must.contains(k)) {
      ++covered;
      if (!r.status.ok()) ++lost_covered;
    }
  }
  std::printf("attempted %zu, acknowledged %zu, covered by the contract %zu, found %zu\n",
              attempted.size(), acked.size(), covered, found);
  EXPECT_EQ(covered, must.size());
  EXPECT_EQ(lost_covered, 0u) << "pages acknowledged before the last checkpoint were lost";
  c->reset();
  s.reset();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

}  // namespace
}  // namespace pagoda::testing
