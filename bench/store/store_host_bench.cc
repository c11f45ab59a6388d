// Host tier put/get against memcpy of the same bytes, measured in the same run.
//
// For each page size (16 KiB .. 2 MiB, real layouts), each repetition opens a fresh store whose
// host arena holds every page of the run, then times:
//   put      Store::Put (reserve a slot, copy + XXH3 checksum, commit) of N distinct pages
//   memcpy   memcpy of the same N pages from the same sources into a buffer of the arena's size
//   get      Store::Get (copy out + verify checksum) of the N pages into a rotating output pool
//   memcpy   memcpy of the same pages into the same output pool
// and prints GB/s (median over repetitions), per-op p50/p99 latency, and the ratio store/memcpy.
//
//   store_host_bench [--arena_mib 512] [--reps 5]
#include <sys/mman.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench_util.h"
#include "pagoda/kvstore/store.h"

namespace pagoda::bench {
namespace {

struct Timing {
  double gbps = 0;
  double p50_us = 0;
  double p99_us = 0;
};

Timing Summarize(const std::vector<double>& op_sec, double total_sec, uint64_t bytes) {
  Timing t;
  t.gbps = bytes / total_sec / 1e9;
  t.p50_us = Percentile(op_sec, 0.5) * 1e6;
  t.p99_us = Percentile(op_sec, 0.99) * 1e6;
  return t;
}

uint8_t* MapBuffer(size_t n) {
  void* p =
      mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (p == MAP_FAILED) {
    std::perror("mmap");
    std::exit(1);
  }
  return static_cast<uint8_t*>(p);
}

int Main(int argc, char** argv) {
  uint64_t arena_mib = 512;
  int reps = 5;
  CLI::App app{"store_host_bench: host-tier put/get against memcpy"};
  app.add_option("--arena_mib", arena_mib, "host arena size in MiB")->check(CLI::PositiveNumber);
  app.add_option("--reps", reps, "repetitions (medians)")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  const uint64_t arena = arena_mib << 20;
  const uint64_t pool = 64ULL << 20;  // sources and outputs rotate through 64 MiB
  const std::vector<PageLayout> layouts = {
      {DType::kFp16, 1, 128, 32},   // 16 KiB
      {DType::kBf16, 8, 128, 16},   // 64 KiB (Llama-3-8B, 16 tokens)
      {DType::kBf16, 8, 128, 64},   // 256 KiB
      {DType::kBf16, 32, 128, 64},  // 1 MiB
      {DType::kBf16, 32, 256, 64},  // 2 MiB
  };
  uint8_t* src = MapBuffer(pool);
  uint8_t* out = MapBuffer(pool);
  uint8_t* dst = MapBuffer(arena);
  FillBytes(src, pool, 42);
  std::printf("store_host_bench: arena %llu MiB, %d reps, medians over reps\n",
              (unsigned long long)arena_mib, reps);
  std::printf("%-9s %6s | %-30s | %-30s | %-30s | %-30s | %5s %5s\n", "page", "pages",
              "put GB/s  p50us  p99us", "memcpy GB/s  p50us  p99us", "get GB/s  p50us  p99us",
              "memcpy GB/s  p50us  p99us", "put/m", "get/m");
  for (const PageLayout& layout : layouts) {
    const uint64_t size = layout.PageBytes();
    const uint64_t n = std::min<uint64_t>(arena / size * 9 / 10, 8192);
    const uint64_t src_slots = pool / size;
    std::vector<double> put_gbps, mput_gbps, get_gbps, mget_gbps, ratio_put, ratio_get;
    Timing put{}, mput{}, get{}, mget{};
    for (int r = 0; r < reps; ++r) {
      StoreOptions o;
      o.layouts = {layout};
      o.host_capacity_bytes = arena;
      o.segment_bytes = std::max<uint64_t>(4 << 20, size);
      auto opened = Store::Open(o);
      if (!opened.ok()) {
        std::fprintf(stderr, "open: %s\n", opened.status().ToString().c_str());
        return 1;
      }
      Store& s = **opened;
      std::vector<double> lat(n);
      // memcpy baseline of the puts.
      double t0 = NowSec();
      for (uint64_t i = 0; i < n; ++i) {
        const double a = NowSec();
        std::memcpy(dst + i * size, src + (i % src_slots) * size, size);
        lat[i] = NowSec() - a;
      }
      mput = Summarize(lat, NowSec() - t0, n * size);
      // Store puts.
      t0 = NowSec();
      for (uint64_t i = 0; i < n; ++i) {
        const double a = NowSec();
        absl::Status st = s.Put("bench", PageKey{i, i}, layout,
                                absl::MakeConstSpan(src + (i % src_slots) * size, size));
        lat[i] = NowSec() - a;
        if (!st.ok()) {
          std::fprintf(stderr, "put: %s\n", st.ToString().c_str());
          return 1;
        }
      }
      put = Summarize(lat, NowSec() - t0, n * size);
      // memcpy baseline of the gets.
      t0 = NowSec();
      for (uint64_t i = 0; i < n; ++i) {
        const double a = NowSec();
        std::memcpy(out + (i % src_slots) * size, dst + i * size, size);
        lat[i] = NowSec() - a;
      }
      mget = Summarize(lat, NowSec() - t0, n * size);
      // Store gets.
      t0 = NowSec();
      for (uint64_t i = 0; i < n; ++i) {
        const double a = NowSec();
        auto info =
            s.Get("bench", PageKey{i, i}, absl::MakeSpan(out + (i % src_slots) * size, size));
        lat[i] = NowSec() - a;
        if (!info.ok()) {
          std::fprintf(stderr, "get: %s\n", info.status().ToString().c_str());
          return 1;
        }
      }
      get = Summarize(lat, NowSec() - t0, n * size);
      put_gbps.push_back(put.gbps);
      mput_gbps.push_back(mput.gbps);
      get_gbps.push_back(get.gbps);
      mget_gbps.push_back(mget.gbps);
      ratio_put.push_back(put.gbps / mput.gbps);
      ratio_get.push_back(get.gbps / mget.gbps);
    }
    std::printf(
        "%6llu KiB %6llu | %8.2f %6.1f %6.1f %8s | %11.2f %6.1f %6.1f %5s | %8.2f %6.1f %6.1f "
        "%8s | %11.2f %6.1f %6.1f %5s | %5.2f %5.2f\n",
        (unsigned long long)(size >> 10), (unsigned long long)n, Median(put_gbps), put.p50_us,
        put.p99_us, "", Median(mput_gbps), mput.p50_us, mput.p99_us, "", Median(get_gbps),
        get.p50_us, get.p99_us, "", Median(mget_gbps), mget.p50_us, mget.p99_us, "",
        Median(ratio_put), Median(ratio_get));
  }
  std::printf("(latencies are of the last repetition; ratios are medians of per-rep ratios)\n");
  return 0;
}

}  // namespace
}  // namespace pagoda::bench

int main(int argc, char** argv) { return pagoda::bench::Main(argc, argv); }
