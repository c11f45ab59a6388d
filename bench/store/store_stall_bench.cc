// Get latency of host-tier pages while the SSD tier writes, deletes and compacts, against the same
// Gets on a quiet store, same run (issue 14: SSD I/O, syncs and compaction must not stall the
// page table).
//
//   quiet   one reader Gets a pinned hot set of host pages (copy + checksum), nothing else runs
//   loaded  the same reader while a writer streams new pages through the host tier (each commit
//           past the watermark demotes a batch to SSD) and removes most of what went down
//           (dead segment space, hence compactions)
// Prints p50 / p99 / p99.9 / max of both and the loaded/quiet ratio of p99. Uses only the public
// Store API, so the same file builds against older versions of the engine for a before/after.
//
//   store_stall_bench [--dir /tmp] [--total_mib 768] [--reps 3]
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "pagoda/kvstore/store.h"

namespace pagoda::bench {
namespace {

void Die(const std::string& what) {
  std::fprintf(stderr, "store_stall_bench: %s\n", what.c_str());
  std::exit(1);
}

struct Lat {
  double p50 = 0, p99 = 0, p999 = 0, max = 0;
  size_t n = 0;
};

Lat Summarize(const std::vector<double>& us) {
  Lat l;
  l.n = us.size();
  l.p50 = Percentile(us, 0.5);
  l.p99 = Percentile(us, 0.99);
  l.p999 = Percentile(us, 0.999);
  l.max = us.empty() ? 0 : *std::max_element(us.begin(), us.end());
  return l;
}

constexpr uint64_t kHot = 64;

// Reads hot pages until `stop`, one Get at a time, returning each latency in microseconds.
std::vector<double> ReadHot(Store& s, const PageLayout& l, const std::atomic<bool>& stop,
                            double min_sec) {
  std::vector<double> us;
  std::vector<uint8_t> out(l.PageBytes());
  const double start = NowSec();
  for (uint64_t i = 0; !stop.load() || NowSec() - start < min_sec; ++i) {
    const double t0 = NowSec();
    auto r = s.Get("bench", PageKey{1, i % kHot}, absl::MakeSpan(out));
    const double t1 = NowSec();
    if (!r.ok()) Die("hot get: " + r.status().ToString());
    us.push_back((t1 - t0) * 1e6);
    if (stop.load() && NowSec() - start >= min_sec) break;
  }
  return us;
}

void Run(const std::string& root, uint64_t total_mib, Lat* quiet, Lat* loaded, double* load_sec) {
  const std::string dir = root + "/pagoda-stall-bench";
  std::filesystem::remove_all(dir);
  StoreOptions o;
  o.data_dir = dir;
  o.host_capacity_bytes = 64ULL << 20;
  o.ssd_capacity_bytes = 4ULL << 30;
  auto opened = Store::Open(o);
  if (!opened.ok()) Die(opened.status().ToString());
  Store& s = **opened;
  const PageLayout l{};
  std::vector<uint8_t> page(l.PageBytes());
  for (uint64_t i = 0; i < kHot; ++i) {
    FillBytes(page.data(), page.size(), i);
    WriteOptions w;
    w.pin = true;  // the hot set stays in the host tier
    if (!s.Put("bench", PageKey{1, i}, l, page, w).ok()) Die("hot put");
  }
  std::atomic<bool> stop{false};
  stop = true;
  *quiet = Summarize(ReadHot(s, l, stop, 2.0));

  stop = false;
  std::vector<double> lat;
  std::thread reader([&] { lat = ReadHot(s, l, stop, 0); });
  const double t0 = NowSec();
  const uint64_t pages = (total_mib << 20) / l.PageBytes();
  std::mt19937_64 rng(1);
  for (uint64_t i = 0; i < pages; ++i) {
    FillBytes(page.data(), page.size(), 1000 + i);
    if (!s.Put("cold", PageKey{2, i}, l, page).ok()) Die("cold put");
    // Remove three of every four pages once they are well below the host tier's reach.
    if (i >= 2048 && rng() % 4 != 0) s.Remove("cold", PageKey{2, i - 2048}).IgnoreError();
  }
  *load_sec = NowSec() - t0;
  stop = true;
  reader.join();
  *loaded = Summarize(lat);
  opened->reset();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace pagoda::bench

int main(int argc, char** argv) {
  using namespace pagoda::bench;
  std::string dir = "/tmp";
  uint64_t total_mib = 768;
  int reps = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--dir") {
      dir = argv[i + 1];
    } else if (a == "--total_mib") {
      total_mib = std::strtoull(argv[i + 1], nullptr, 10);
    } else if (a == "--reps") {
      reps = std::atoi(argv[i + 1]);
    } else {
      Die("unknown flag " + a);
    }
  }
  std::vector<double> q99, l99, l999, lmax, ratio;
  for (int r = 0; r < reps; ++r) {
    Lat quiet, loaded;
    double sec = 0;
    Run(dir, total_mib, &quiet, &loaded, &sec);
    std::printf(
        "rep %d: quiet get p50 %.1f us p99 %.1f us (%zu gets) | under SSD load (%.0f MiB in %.1f "
        "s): p50 %.1f us p99 %.1f us p99.9 %.1f us max %.0f us (%zu gets) | p99 ratio %.1f\n",
        r, quiet.p50, quiet.p99, quiet.n, double(total_mib), sec, loaded.p50, loaded.p99,
        loaded.p999, loaded.max, loaded.n, loaded.p99 / quiet.p99);
    q99.push_back(quiet.p99);
    l99.push_back(loaded.p99);
    l999.push_back(loaded.p999);
    lmax.push_back(loaded.max);
    ratio.push_back(loaded.p99 / quiet.p99);
  }
  std::printf(
      "median of %d: quiet p99 %.1f us, loaded p99 %.1f us, loaded p99.9 %.1f us, loaded max %.0f "
      "us, loaded/quiet p99 %.1f\n",
      reps, Median(q99), Median(l99), Median(l999), Median(lmax), Median(ratio));
  return 0;
}
