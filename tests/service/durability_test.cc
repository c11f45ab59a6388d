// Durability across restarts: pages on SSD stay readable after a crash, and a SIGTERM under load
// loses no page whose Put was acknowledged.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "pagodad_process.h"

namespace pagoda::testing {
namespace {

// Only 64 KiB pages, an 8 MiB host tier: most pages of a few hundred go down to SSD.
// `sync`: ssd_sync_writes (the engine skips RocksDB's WAL without it, so only a graceful stop,
// which flushes, makes SSD pages durable; with it, pages on SSD survive a crash too).
std::string SmallHostConfig(const std::string& ssd, bool sync = false) {
  return R"(
server: {grpc_host: 127.0.0.1, grpc_port: 0, http_host: 127.0.0.1, http_port: 0}
store:
  host_bytes: 8MiB
  ssd_sync_writes: )" +
         std::string(sync ? "true" : "false") + R"(
  ssd_bytes: )" +
         ssd + R"(
  layouts: [{dtype: fp16, kv_heads: 8, head_dim: 128, page_tokens: 16}]
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
    std::unique_ptr<PagodadProcess> s =
        Start(SmallHostConfig("256MiB", /*sync=*/GetParam() == SIGKILL), dir);
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
  std::unique_ptr<PagodadProcess> s =
      Start(SmallHostConfig("256MiB", /*sync=*/GetParam() == SIGKILL), dir);
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

}  // namespace
}  // namespace pagoda::testing
