// Page-table memory per page and rebuild rate from the SSD tier, with N (default 10 million)
// pages.
//
// Setup (untimed): N metadata records written into an SSD tier with the engine's own encoder
// (SsdTier::WriteMetaOnlyForBench; no page bytes: rebuild never reads them), then flushed.
// Baseline: a scan of the same metadata column family that only decodes each record (the floor
// any rebuild pays to RocksDB). Measured: Store::Open, which scans and builds the page table.
// Prints pages/s of both and their ratio, the engine's accounted metadata bytes per page
// (StoreStats::metadata_bytes: slab, hash index, allocators, leases, tenants) and the process RSS
// growth per page across Open (which also counts RocksDB's own memory).
//
//   store_meta_bench [--dir /tmp] [--pages 10000000] [--reps 3]
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "bench_util.h"
#include "pagoda/kvstore/store.h"
#include "ssd_tier.h"

namespace pagoda::bench {
namespace {

uint64_t RssBytes() {
  std::ifstream f("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

void Die(const std::string& what) {
  std::fprintf(stderr, "store_meta_bench: %s\n", what.c_str());
  std::exit(1);
}

int Main(int argc, char** argv) {
  std::string base = "/tmp";
  uint64_t pages = 10'000'000;
  int reps = 3;
  CLI::App app{"store_meta_bench: page-table memory per page and rebuild rate"};
  app.add_option("--dir", base, "folder for the SSD tier")->check(CLI::ExistingDirectory);
  app.add_option("--pages", pages, "metadata records")->check(CLI::PositiveNumber);
  app.add_option("--reps", reps, "repetitions (medians)")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  const PageLayout layout{DType::kBf16, 8, 128, 16};
  std::string dir = base + "/pagoda-meta-bench-XXXXXX";
  if (mkdtemp(dir.data()) == nullptr) Die("mkdtemp");
  {
    auto ssd = SsdTier::Open(dir, nullptr, false);
    if (!ssd.ok()) Die(ssd.status().ToString());
    std::vector<std::pair<uint32_t, std::string>> tenants = {
        {0, "t0"}, {1, "t1"}, {2, "t2"}, {3, "t3"}};
    if (!(*ssd)->WriteBatch({}, tenants).ok()) Die("tenants");
    const double t0 = NowSec();
    std::vector<SsdPageMeta> batch;
    for (uint64_t i = 0; i < pages; ++i) {
      SsdPageMeta m;
      m.tenant = static_cast<uint32_t>(i % 4);
      m.key = PageKey{i * 0x9E3779B97F4A7C15ULL, ~i * 0xC2B2AE3D27D4EB4FULL};
      m.layout = layout.Id();
      m.size = static_cast<uint32_t>(layout.PageBytes());
      m.checksum = i;
      batch.push_back(m);
      if (batch.size() == 100'000 || i + 1 == pages) {
        if (absl::Status s = (*ssd)->WriteMetaOnlyForBench(batch); !s.ok()) Die(s.ToString());
        batch.clear();
      }
    }
    if (!(*ssd)->Flush().ok()) Die("flush");
    std::printf("store_meta_bench: wrote %llu metadata records in %.1f s under %s\n",
                (unsigned long long)pages, NowSec() - t0, dir.c_str());
  }
  std::vector<double> scan_rate, open_rate, ratio, bytes_pp, rss_pp;
  for (int r = 0; r < reps; ++r) {
    {
      auto ssd = SsdTier::Open(dir, nullptr, false);
      if (!ssd.ok()) Die(ssd.status().ToString());
      uint64_t n = 0, sum = 0;
      const double t0 = NowSec();
      absl::Status s = (*ssd)->ForEachPage(
          [&](const SsdPageMeta& m) {
            ++n;
            sum += m.checksum;
          },
          [](std::string_view) {});
      const double dt = NowSec() - t0;
      if (!s.ok() || n != pages) Die("scan");
      scan_rate.push_back(n / dt);
    }
    const uint64_t rss0 = RssBytes();
    StoreOptions o;
    o.data_dir = dir;
    o.layouts = {layout};
    o.host_capacity_bytes = 4 * layout.PageBytes();
    o.segment_bytes = layout.PageBytes();
    const double t0 = NowSec();
    auto store = Store::Open(o);
    const double dt = NowSec() - t0;
    if (!store.ok()) Die(store.status().ToString());
    const StoreStats st = (*store)->Stats();
    if (st.pages != pages) Die("rebuilt page count differs");
    open_rate.push_back(pages / dt);
    ratio.push_back(open_rate.back() / scan_rate.back());
    bytes_pp.push_back(static_cast<double>(st.metadata_bytes) / pages);
    rss_pp.push_back(static_cast<double>(RssBytes() - rss0) / pages);
    std::printf(
        "  rep %d: scan %.2f M pages/s, Store::Open (rebuild) %.2f s = %.2f M pages/s, "
        "metadata %.1f B/page, RSS growth %.1f B/page\n",
        r, scan_rate.back() / 1e6, dt, open_rate.back() / 1e6, bytes_pp.back(), rss_pp.back());
  }
  std::printf(
      "median: rebuild %.2f M pages/s (scan-only baseline %.2f M pages/s, ratio %.2f); "
      "metadata %.1f B/page (goal 128: %.2f of it); RSS growth %.1f B/page\n",
      Median(open_rate) / 1e6, Median(scan_rate) / 1e6, Median(ratio), Median(bytes_pp),
      Median(bytes_pp) / 128.0, Median(rss_pp));
  std::filesystem::remove_all(dir);
  return 0;
}

}  // namespace
}  // namespace pagoda::bench

int main(int argc, char** argv) { return pagoda::bench::Main(argc, argv); }
