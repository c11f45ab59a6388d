// Issue 14: a full disk. pagodad on a small tmpfs that really fills (ssd_bytes larger than the file
// system) keeps serving writes and reads under load, dropping its oldest SSD pages, and never
// serves wrong bytes; with ssd_bytes below the file system's size, disk use (dead segment space
// included) stays within ssd_bytes; space another process frees again is taken back. Mounting needs
// root: skipped with a message otherwise.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "pagodad_process.h"

namespace pagoda::testing {
namespace {

// A tmpfs of `mib` MiB mounted on a fresh directory; unmounted and removed on destruction.
class SmallFs {
 public:
  explicit SmallFs(int mib) {
    char tmpl[] = "/tmp/pgdfull-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) {
      error_ = std::strerror(errno);
      return;
    }
    dir_ = tmpl;
    const std::string opts = "size=" + std::to_string(mib) + "m,mode=0700";
    if (mount("tmpfs", dir_.c_str(), "tmpfs", 0, opts.c_str()) != 0) {
      error_ = std::string("mount tmpfs: ") + std::strerror(errno);
      return;
    }
    mounted_ = true;
  }
  ~SmallFs() {
    if (mounted_) umount2(dir_.c_str(), MNT_DETACH);
    if (!dir_.empty()) rmdir(dir_.c_str());
  }
  bool ok() const { return mounted_; }
  const std::string& error() const { return error_; }
  std::string Sub(const std::string& name) const {
    const std::string p = dir_ + "/" + name;
    std::filesystem::create_directories(p);
    return p;
  }

 private:
  std::string dir_;
  std::string error_;
  bool mounted_ = false;
};

std::string Config(const std::string& ssd_bytes) {
  return R"(
server: {grpc_host: 127.0.0.1, grpc_port: 0, http_host: 127.0.0.1, http_port: 0}
store:
  host_bytes: 4MiB
  ssd_bytes: )" +
         ssd_bytes + R"(
  layouts: [{dtype: fp16, kv_heads: 8, head_dim: 128, page_tokens: 16}]
)";
}

// Bytes the segment files take on disk.
uint64_t SegmentDiskBytes(const std::string& data_dir) {
  uint64_t total = 0;
  std::error_code ec;
  for (const auto& f : std::filesystem::recursive_directory_iterator(data_dir, ec)) {
    if (f.path().extension() != ".seg") continue;
    struct stat st;
    if (stat(f.path().c_str(), &st) == 0) total += static_cast<uint64_t>(st.st_blocks) * 512;
  }
  return total;
}

TEST(FullDiskTest, KeepsServingAndNeverServesWrongBytesWhenTheFileSystemFills) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to mount a small tmpfs";
  SmallFs fs(40);
  if (!fs.ok()) GTEST_SKIP() << "cannot mount a tmpfs here: " << fs.error();
  PagodadProcess::Options o;
  o.config_yaml = Config("1GiB");  // far more than the 40 MiB file system holds
  o.data_dir = fs.Sub("data");
  absl::StatusOr<std::unique_ptr<PagodadProcess>> s = PagodadProcess::Start(o);
  ASSERT_TRUE(s.ok()) << s.status();
  const PageLayout l{};
  constexpr uint64_t kPerWriter = 1600;  // 100 MiB per writer, 200 MiB in all
  std::atomic<uint64_t> written[2] = {0, 0};
  std::atomic<bool> done{false};
  std::atomic<int> wrong{0}, odd_errors{0}, reads_ok{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] {
      auto c = Client::Connect(
          (*s)->ClientOpts("full", w ? DataPathKind::kRemote : DataPathKind::kLocal));
      ASSERT_TRUE(c.ok()) << c.status();
      for (uint64_t i = 0; i < kPerWriter; i += 8) {
        std::vector<std::vector<uint8_t>> data;
        std::vector<PutPage> puts;
        for (uint64_t j = i; j < i + 8; ++j) {
          data.push_back(PageBytes(PageKey{300 + uint64_t(w), j}, l.PageBytes()));
        }
        for (uint64_t j = 0; j < 8; ++j) {
          puts.push_back({PageKey{300 + uint64_t(w), i + j}, l.Id(), data[j]});
        }
        std::vector<absl::Status> st = (*c)->Put(puts);
        for (uint64_t j = 0; j < 8; ++j) {
          ASSERT_TRUE(st[j].ok()) << "writer " << w << " page " << i + j << ": " << st[j];
        }
        written[w] = i + 8;
      }
    });
  }
  // A reader of random pages written so far: each read is right or NOT_FOUND (dropped).
  threads.emplace_back([&] {
    auto c = Client::Connect((*s)->ClientOpts("full", DataPathKind::kAuto));
    ASSERT_TRUE(c.ok());
    std::mt19937_64 rng(14);
    std::vector<uint8_t> out(l.PageBytes());
    while (!done.load()) {
      const int w = static_cast<int>(rng() % 2);
      const uint64_t n = written[w].load();
      if (n == 0) continue;
      const PageKey k{300 + uint64_t(w), rng() % n};
      GetResult r = (*c)->Get({{k, absl::MakeSpan(out)}})[0];
      if (r.status.ok()) {
        reads_ok++;
        if (out != PageBytes(k, l.PageBytes())) wrong++;
      } else if (!absl::IsNotFound(r.status)) {
        odd_errors++;
        ADD_FAILURE() << "read " << k.Hex() << ": " << r.status;
      }
    }
  });
  threads[0].join();
  threads[1].join();
  done = true;
  threads[2].join();
  if (HasFailure()) {
    const std::string log = (*s)->Log();
    std::printf("pagodad log (end):\n%s\n",
                log.substr(log.size() > 4000 ? log.size() - 4000 : 0).c_str());
  }
  EXPECT_EQ(wrong.load(), 0) << "WRONG BYTES SERVED";
  EXPECT_EQ(odd_errors.load(), 0);
  EXPECT_GT(reads_ok.load(), 0);
  // Still serving: new pages go in and read back, and what survived of the load reads right.
  auto c = Client::Connect((*s)->ClientOpts("full", DataPathKind::kAuto));
  ASSERT_TRUE(c.ok());
  std::vector<uint8_t> out(l.PageBytes());
  for (uint64_t i = 0; i < 16; ++i) {
    const PageKey k{399, i};
    const std::vector<uint8_t> bytes = PageBytes(k, l.PageBytes());
    ASSERT_TRUE((*c)->Put({{k, l.Id(), bytes}})[0].ok());
    GetResult r = (*c)->Get({{k, absl::MakeSpan(out)}})[0];
    ASSERT_TRUE(r.status.ok()) << k.Hex() << ": " << r.status;
    EXPECT_EQ(out, bytes);
  }
  size_t kept = 0;
  for (int w = 0; w < 2; ++w) {
    for (uint64_t i = 0; i < kPerWriter; ++i) {
      const PageKey k{300 + uint64_t(w), i};
      GetResult r = (*c)->Get({{k, absl::MakeSpan(out)}})[0];
      if (absl::IsNotFound(r.status)) continue;
      ASSERT_TRUE(r.status.ok()) << k.Hex() << ": " << r.status;
      ASSERT_EQ(out, PageBytes(k, l.PageBytes())) << "WRONG BYTES for " << k.Hex();
      ++kept;
    }
  }
  std::printf("pages kept of %llu written on a 40 MiB file system: %zu\n",
              static_cast<unsigned long long>(2 * kPerWriter), kept);
  EXPECT_GT(kept, 100u) << "the store dropped nearly everything";
  // The operator sees the disk filling: counted, and the bound the store keeps to below the file
  // system's size (dead space included in what it takes).
  absl::StatusOr<std::string> m = HttpGet((*s)->http_port(), "/metrics");
  ASSERT_TRUE(m.ok());
  const double full = MetricValue(*m, "pagoda_ssd_full_total");
  const double limit = MetricValue(*m, "pagoda_ssd_limit_bytes");
  const double disk = MetricValue(*m, "pagoda_ssd_disk_bytes");
  std::printf("file system full %g times; SSD tier limit %g MiB, disk taken %g MiB\n", full,
              limit / (1 << 20), disk / (1 << 20));
  EXPECT_GE(full, 1);
  EXPECT_GT(limit, 0);
  EXPECT_LT(limit, 40.0 * (1 << 20));
  EXPECT_GT(disk, 0);
  EXPECT_LE(disk, 40.0 * (1 << 20));
  c->reset();
  absl::StatusOr<int> rc = (*s)->Stop(SIGTERM);
  ASSERT_TRUE(rc.ok());
  EXPECT_EQ(*rc, 0) << (*s)->Log();
}

TEST(FullDiskTest, DiskUseIncludingDeadSpaceStaysWithinSsdBytes) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to mount a small tmpfs";
  SmallFs fs(96);
  if (!fs.ok()) GTEST_SKIP() << "cannot mount a tmpfs here: " << fs.error();
  constexpr uint64_t kSsdBytes = 16ULL << 20;
  PagodadProcess::Options o;
  o.config_yaml = Config("16MiB");
  o.data_dir = fs.Sub("data");
  absl::StatusOr<std::unique_ptr<PagodadProcess>> s = PagodadProcess::Start(o);
  ASSERT_TRUE(s.ok()) << s.status();
  auto c = Client::Connect((*s)->ClientOpts("dead", DataPathKind::kLocal));
  ASSERT_TRUE(c.ok());
  const PageLayout l{};
  std::mt19937_64 rng(7);
  uint64_t max_disk = 0;
  // 80 MiB of pages, every other batch followed by removes of random older pages (dead space).
  for (uint64_t i = 0; i < 1280; i += 16) {
    std::vector<std::vector<uint8_t>> data;
    std::vector<PutPage> puts;
    for (uint64_t j = i; j < i + 16; ++j) data.push_back(PageBytes(PageKey{9, j}, l.PageBytes()));
    for (uint64_t j = 0; j < 16; ++j) puts.push_back({PageKey{9, i + j}, l.Id(), data[j]});
    for (const absl::Status& st : (*c)->Put(puts)) ASSERT_TRUE(st.ok()) << st;
    if ((i / 16) % 2 == 1) {
      std::vector<PageKey> gone;
      for (int k = 0; k < 6; ++k) gone.push_back(PageKey{9, rng() % (i + 16)});
      (*c)->Remove(gone);  // NOT_FOUND for pages already dropped is fine
    }
    max_disk = std::max(max_disk, SegmentDiskBytes(o.data_dir));
  }
  std::printf("largest segment disk use seen: %.1f MiB of %.1f MiB\n", max_disk / 1048576.0,
              kSsdBytes / 1048576.0);
  EXPECT_LE(max_disk, kSsdBytes);
  EXPECT_GT(max_disk, kSsdBytes / 2) << "the test did not fill the SSD tier";
  c->reset();
  absl::StatusOr<int> rc = (*s)->Stop(SIGTERM);
  ASSERT_TRUE(rc.ok());
  EXPECT_EQ(*rc, 0) << (*s)->Log();
}

// Another process fills the file system, then frees its space again: the SSD tier's limit, learned
// when the disk filled, grows back, so the store keeps more pages than while the disk was short.
TEST(FullDiskTest, TheSsdLimitGrowsBackWhenTheFileSystemHasRoomAgain) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to mount a small tmpfs";
  SmallFs fs(48);
  if (!fs.ok()) GTEST_SKIP() << "cannot mount a tmpfs here: " << fs.error();
  const std::string hog = fs.Sub("other") + "/hog";
  {
    std::vector<char> mib(1 << 20, 'h');
    std::FILE* f = std::fopen(hog.c_str(), "w");
    ASSERT_NE(f, nullptr);
    for (int i = 0; i < 20; ++i) ASSERT_EQ(std::fwrite(mib.data(), 1, mib.size(), f), mib.size());
    ASSERT_EQ(std::fclose(f), 0);
  }
  PagodadProcess::Options o;
  o.config_yaml = Config("1GiB");
  o.data_dir = fs.Sub("data");
  absl::StatusOr<std::unique_ptr<PagodadProcess>> s = PagodadProcess::Start(o);
  ASSERT_TRUE(s.ok()) << s.status();
  auto c = Client::Connect((*s)->ClientOpts("regrow", DataPathKind::kLocal));
  ASSERT_TRUE(c.ok());
  const PageLayout l{};
  constexpr uint64_t kPages = 800;  // 50 MiB per round: more than the file system holds
  auto write = [&](uint64_t space) {
    for (uint64_t i = 0; i < kPages; i += 8) {
      std::vector<std::vector<uint8_t>> data;
      std::vector<PutPage> puts;
      for (uint64_t j = i; j < i + 8; ++j) {
        data.push_back(PageBytes(PageKey{space, j}, l.PageBytes()));
      }
      for (uint64_t j = 0; j < 8; ++j) puts.push_back({PageKey{space, i + j}, l.Id(), data[j]});
      for (const absl::Status& st : (*c)->Put(puts)) ASSERT_TRUE(st.ok()) << st;
    }
  };
  // Pages of both rounds that read back (each with its own bytes; a miss is a dropped page).
  auto kept = [&]() {
    size_t n = 0;
    std::vector<uint8_t> out(l.PageBytes());
    for (uint64_t space : {600, 601}) {
      for (uint64_t i = 0; i < kPages; ++i) {
        const PageKey k{space, i};
        GetResult r = (*c)->Get({{k, absl::MakeSpan(out)}})[0];
        if (absl::IsNotFound(r.status)) continue;
        EXPECT_TRUE(r.status.ok()) << k.Hex() << ": " << r.status;
        EXPECT_EQ(out, PageBytes(k, l.PageBytes())) << "WRONG BYTES for " << k.Hex();
        ++n;
      }
    }
    return n;
  };
  auto metric = [&](const char* name) {
    absl::StatusOr<std::string> m = HttpGet((*s)->http_port(), "/metrics");
    EXPECT_TRUE(m.ok());
    return m.ok() ? MetricValue(*m, name) : -1.0;
  };
  write(600);
  const double limit_short = metric("pagoda_ssd_limit_bytes");
  const size_t kept_short = kept();
  EXPECT_GE(metric("pagoda_ssd_full_total"), 1);
  EXPECT_EQ(metric("pagoda_ssd_limit_regrown_total"), 0);
  std::printf("file system full %g times while the other process held 20 MiB\n",
              metric("pagoda_ssd_full_total"));
  ASSERT_LT(limit_short, 28.0 * (1 << 20)) << "the other process' 20 MiB did not count";
  ASSERT_EQ(std::remove(hog.c_str()), 0);
  write(601);
  const double limit_after = metric("pagoda_ssd_limit_bytes");
  const size_t kept_after = kept();
  std::printf("SSD limit %.1f MiB (%zu pages kept) while 20 MiB were taken, %.1f MiB (%zu) after\n",
              limit_short / (1 << 20), kept_short, limit_after / (1 << 20), kept_after);
  EXPECT_GE(metric("pagoda_ssd_limit_regrown_total"), 1);
  EXPECT_GT(limit_after, limit_short + 12.0 * (1 << 20));
  EXPECT_LT(limit_after, 48.0 * (1 << 20));
  EXPECT_GT(kept_after, kept_short + 150);
  c->reset();
  absl::StatusOr<int> rc = (*s)->Stop(SIGTERM);
  ASSERT_TRUE(rc.ok());
  EXPECT_EQ(*rc, 0) << (*s)->Log();
}

}  // namespace
}  // namespace pagoda::testing
