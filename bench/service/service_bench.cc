// pagoda_service_bench: put/get throughput and p50/p99 latency of single-page operations, 16 KiB
// to 2 MiB pages, through pagodad's local zero-copy path and its remote (gRPC) path, against
// redis-server SET/GET of the same bytes with the same number of clients, all in one run. Both
// servers are started here on 127.0.0.1. Prints the medians of --repeats runs and the ratios.
//
// Pagoda does more work per operation than Redis here: two-phase writes and an XXH3 checksum on
// every put and get (the client verifies what it read). Redis stores and returns bytes as is.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "child_process.h"
#include "nlohmann/json.hpp"
#include "pagoda/client/client.h"
#include "resp_client.h"

namespace pagoda::bench {
namespace {

using Clock = std::chrono::steady_clock;

PageLayout LayoutFor(uint64_t bytes) {
  // fp16, head_dim 128: 16 KiB = 2 KV heads x 16 tokens; larger pages = 8 heads x more tokens.
  if (bytes == (16u << 10)) return PageLayout{DType::kFp16, 2, 128, 16};
  return PageLayout{DType::kFp16, 8, 128, static_cast<uint32_t>(bytes / (2 * 8 * 128 * 2))};
}

struct Sample {
  double gib_s = 0;  // aggregate throughput of all clients
  double p50_us = 0;
  double p99_us = 0;
};

double Pct(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * double(v.size())))];
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Runs `op(client, i)` for i in [0, ops) on each of `clients` threads, all starting together.
template <typename Op>
Sample RunPhase(int clients, uint64_t ops, uint64_t page_bytes, Op op) {
  std::vector<std::vector<double>> lat(clients);
  std::barrier start(clients + 1);
  std::vector<std::thread> threads;
  std::atomic<int> errors{0};
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      lat[c].reserve(ops);
      start.arrive_and_wait();
      for (uint64_t i = 0; i < ops; ++i) {
        const auto t0 = Clock::now();
        if (!op(c, i)) errors++;
        lat[c].push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
      }
    });
  }
  start.arrive_and_wait();
  const auto t0 = Clock::now();
  for (std::thread& t : threads) t.join();
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  if (errors > 0) {
    std::fprintf(stderr, "bench: %d failed operations\n", errors.load());
    std::exit(1);
  }
  std::vector<double> all;
  for (auto& l : lat) all.insert(all.end(), l.begin(), l.end());
  Sample s;
  s.gib_s = double(clients) * double(ops) * double(page_bytes) / secs / double(1ull << 30);
  s.p50_us = Pct(all, 0.50);
  s.p99_us = Pct(all, 0.99);
  return s;
}

std::string ReadFile(const std::string& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace
}  // namespace pagoda::bench

int main(int argc, char** argv) {
  using namespace pagoda;
  using namespace pagoda::bench;
  CLI::App app{"pagodad vs redis-server: single-page put/get throughput and latency"};
  std::string sizes_text = "16,64,256,1024,2048";
  int clients = 2, repeats = 3;
  uint64_t phase_mib = 64;
  std::string redis_bin = "redis-server";
  bool markdown = false;
  app.add_option("--sizes-kib", sizes_text, "page sizes in KiB")->capture_default_str();
  app.add_option("--clients", clients, "client threads (same for every system)")
      ->capture_default_str();
  app.add_option("--phase-mib", phase_mib, "bytes each put/get phase moves, all clients")
      ->capture_default_str();
  app.add_option("--repeats", repeats, "runs per measurement (medians are reported)")
      ->capture_default_str();
  app.add_option("--redis-server", redis_bin, "redis-server binary")->capture_default_str();
  app.add_flag("--markdown", markdown, "also print a markdown table");
  CLI11_PARSE(app, argc, argv);
  std::vector<uint64_t> sizes;
  for (absl::string_view s : absl::StrSplit(sizes_text, ',')) {
    uint64_t k = 0;
    if (!absl::SimpleAtoi(s, &k)) {
      std::cerr << "bad size " << s << "\n";
      return 2;
    }
    sizes.push_back(k << 10);
  }

  char tmpl[] = "/tmp/pgdbench-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return 1;
  const std::string dir = tmpl;
  std::string yaml =
      "server: {grpc_port: 0, http_port: -1}\nstore:\n  host_bytes: 1GiB\n  ssd_bytes: 0\n"
      "  layouts:\n";
  for (uint64_t s : sizes) {
    PageLayout l = LayoutFor(s);
    if (!l.Validate().ok() || l.PageBytes() != s) {
      std::cerr << "no layout for " << s << " bytes\n";
      return 2;
    }
    yaml += absl::StrFormat("    - {dtype: fp16, kv_heads: %d, head_dim: 128, page_tokens: %d}\n",
                            l.kv_heads, l.page_tokens);
  }
  yaml += "logging: {level: warn}\n";
  { std::ofstream(dir + "/bench.yaml") << yaml; }
  absl::StatusOr<pid_t> pagodad = Spawn({PAGODAD_BIN, "--config", dir + "/bench.yaml", "--data-dir",
                                         dir, "--port-file", dir + "/ports.json"},
                                        dir + "/pagodad.log");
  const int redis_port = FreePort();
  absl::StatusOr<pid_t> redis =
      Spawn({redis_bin, "--port", std::to_string(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "no", "--dir", dir},
            dir + "/redis.log");
  if (!pagodad.ok() || !redis.ok()) return 1;
  int grpc_port = 0;
  for (int i = 0; i < 300 && grpc_port == 0; ++i) {
    const nlohmann::json j =
        nlohmann::json::parse(ReadFile(dir + "/ports.json"), nullptr, /*allow_exceptions=*/false);
    if (j.is_object()) grpc_port = j.value("grpc_port", 0);
    if (grpc_port == 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  bool redis_up = false;
  for (int i = 0; i < 100 && !redis_up; ++i) {
    absl::StatusOr<RespClient> r = RespClient::Connect(redis_port);
    redis_up = r.ok() && r->Command({"PING"}).value_or("") == "PONG";
    if (!redis_up) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (grpc_port == 0 || !redis_up) {
    std::cerr << "servers did not start:\n"
              << ReadFile(dir + "/pagodad.log") << ReadFile(dir + "/redis.log");
    StopChild(*pagodad);
    StopChild(*redis);
    return 1;
  }
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  std::printf(
      "pagoda_service_bench: %d clients, %d repeats (medians), %llu MiB per phase, "
      "host %s, %u cpus\n",
      clients, repeats, static_cast<unsigned long long>(phase_mib), host,
      std::thread::hardware_concurrency());

  // pagoda-ucx: a remote client whose page bytes move by UCX one-sided reads/writes of pagodad's
  // arena (gRPC only for control), compared with pagoda-remote (bytes over gRPC) in the same run.
  const char* systems[] = {"redis", "pagoda-local", "pagoda-remote", "pagoda-ucx"};
  // results[size][system][op] = samples over repeats
  std::map<uint64_t, std::map<std::string, std::map<std::string, std::vector<Sample>>>> results;
  uint64_t key_base = 1;
  for (uint64_t size : sizes) {
    const PageLayout layout = LayoutFor(size);
    const uint64_t ops = std::max<uint64_t>(16, (phase_mib << 20) / size / clients);
    // Same source bytes for every system; each page's first 8 bytes are its index.
    std::vector<std::vector<uint8_t>> src(clients, std::vector<uint8_t>(size));
    std::vector<std::vector<uint8_t>> dst(clients, std::vector<uint8_t>(size));
    for (int c = 0; c < clients; ++c) {
      for (uint64_t i = 0; i < size; ++i) src[c][i] = static_cast<uint8_t>(i * 131 + c * 7);
    }
    for (int r = 0; r < repeats; ++r) {
      for (const char* sys : systems) {
        const std::string name = sys;
        if (name == "redis") {
          std::vector<RespClient> rc;
          for (int c = 0; c < clients; ++c) rc.push_back(*RespClient::Connect(redis_port));
          auto key = [&](int c, uint64_t i) { return absl::StrCat("p:", size, ":", c, ":", i); };
          results[size][name]["put"].push_back(RunPhase(clients, ops, size, [&](int c, uint64_t i) {
            memcpy(src[c].data(), &i, 8);
            return rc[c].Set(key(c, i), src[c]).ok();
          }));
          results[size][name]["get"].push_back(RunPhase(clients, ops, size, [&](int c, uint64_t i) {
            absl::StatusOr<size_t> n = rc[c].Get(key(c, i), absl::MakeSpan(dst[c]));
            return n.ok() && *n == size;
          }));
          (void)rc[0].Command({"FLUSHALL"});
          continue;
        }
        std::vector<std::unique_ptr<Client>> pc;
        for (int c = 0; c < clients; ++c) {
          ClientOptions o;
          o.target = absl::StrCat("127.0.0.1:", grpc_port);
          o.tenant = "bench";
          o.local_connections = 1;
          o.data_path = name == "pagoda-local" ? DataPathKind::kLocal : DataPathKind::kRemote;
          o.ucx = name == "pagoda-ucx";
          absl::StatusOr<std::unique_ptr<Client>> cl = Client::Connect(o);
          if (!cl.ok()) {
            std::cerr << cl.status() << "\n";
            return 1;
          }
          if (o.ucx && (*cl)->data_path() != "ucx") {
            std::cerr << "pagodad offers no UCX path (see its log)\n";
            return 1;
          }
          pc.push_back(std::move(*cl));
        }
        const uint64_t base = key_base;
        key_base += 1;
        auto key = [&](int c, uint64_t i) { return PageKey{base, (uint64_t(c) << 40) | i}; };
        results[size][name]["put"].push_back(RunPhase(clients, ops, size, [&](int c, uint64_t i) {
          memcpy(src[c].data(), &i, 8);
          PutPage p{key(c, i), layout.Id(), src[c]};
          return pc[c]->Put({&p, 1})[0].ok();
        }));
        results[size][name]["get"].push_back(RunPhase(clients, ops, size, [&](int c, uint64_t i) {
          GetPage g{key(c, i), absl::MakeSpan(dst[c])};
          GetResult res = pc[c]->Get({&g, 1})[0];
          uint64_t first = 0;
          memcpy(&first, dst[c].data(), 8);
          return res.status.ok() && first == i;  // and the checksum was verified by the client
        }));
        for (int c = 0; c < clients; ++c) {  // free the host tier for the next run (untimed)
          std::vector<PageKey> keys;
          for (uint64_t i = 0; i < ops; ++i) keys.push_back(key(c, i));
          (void)pc[c]->Remove(keys);
        }
      }
    }
  }

  std::printf("\n%-8s %-14s %-4s %10s %10s %10s %12s\n", "page", "system", "op", "GiB/s", "p50 us",
              "p99 us", "x redis");
  std::string md =
      "| page | op | redis GiB/s | local GiB/s (x redis) | remote GiB/s (x redis) | redis p50/p99 "
      "us "
      "| local p50/p99 us | remote p50/p99 us |\n|---|---|---|---|---|---|---|---|\n";
  for (uint64_t size : sizes) {
    for (const char* op : {"put", "get"}) {
      std::map<std::string, Sample> med;
      for (const char* sys : systems) {
        std::vector<double> g, p50, p99;
        for (const Sample& s : results[size][sys][op]) {
          g.push_back(s.gib_s);
          p50.push_back(s.p50_us);
          p99.push_back(s.p99_us);
        }
        med[sys] = {Median(g), Median(p50), Median(p99)};
        std::printf("%-8s %-14s %-4s %10.2f %10.1f %10.1f %12.2f\n",
                    absl::StrCat(size >> 10, "KiB").c_str(), sys, op, med[sys].gib_s,
                    med[sys].p50_us, med[sys].p99_us, med[sys].gib_s / med["redis"].gib_s);
      }
      md += absl::StrFormat(
          "| %d KiB | %s | %.2f | %.2f (%.2fx) | %.2f (%.2fx) | %.0f / %.0f | %.0f / %.0f | %.0f / "
          "%.0f |\n",
          size >> 10, op, med["redis"].gib_s, med["pagoda-local"].gib_s,
          med["pagoda-local"].gib_s / med["redis"].gib_s, med["pagoda-remote"].gib_s,
          med["pagoda-remote"].gib_s / med["redis"].gib_s, med["redis"].p50_us, med["redis"].p99_us,
          med["pagoda-local"].p50_us, med["pagoda-local"].p99_us, med["pagoda-remote"].p50_us,
          med["pagoda-remote"].p99_us);
    }
  }
  std::string ucx_md =
      "| page | op | gRPC bytes GiB/s | UCX GiB/s (x gRPC) | gRPC p50/p99 us | UCX p50/p99 us "
      "|\n|---|---|---|---|---|---|\n";
  for (uint64_t size : sizes) {
    for (const char* op : {"put", "get"}) {
      std::map<std::string, Sample> med;
      for (const char* sys : {"pagoda-remote", "pagoda-ucx"}) {
        std::vector<double> g, p50, p99;
        for (const Sample& s : results[size][sys][op]) {
          g.push_back(s.gib_s);
          p50.push_back(s.p50_us);
          p99.push_back(s.p99_us);
        }
        med[sys] = {Median(g), Median(p50), Median(p99)};
      }
      const Sample& r = med["pagoda-remote"];
      const Sample& u = med["pagoda-ucx"];
      std::printf("%-8s ucx vs remote %-4s %.2fx GiB/s, p50 %.1f vs %.1f us\n",
                  absl::StrCat(size >> 10, "KiB").c_str(), op, u.gib_s / r.gib_s, u.p50_us,
                  r.p50_us);
      ucx_md += absl::StrFormat(
          "| %d KiB | %s | %.2f | %.2f (%.2fx) | %.0f / %.0f | %.0f / %.0f |\n", size >> 10, op,
          r.gib_s, u.gib_s, u.gib_s / r.gib_s, r.p50_us, r.p99_us, u.p50_us, u.p99_us);
    }
  }
  if (markdown) std::printf("\n%s\n%s", md.c_str(), ucx_md.c_str());
  const int rc_p = StopChild(*pagodad);
  StopChild(*redis);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  if (rc_p != 0) {
    std::fprintf(stderr, "pagodad exited with %d\n", rc_p);
    return 1;
  }
  return 0;
}
