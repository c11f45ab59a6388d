// pagoda_service_bench: put/get throughput and p50/p99 latency of single-page operations, 16 KiB
// to 2 MiB pages, 1/2/4 clients, through pagodad's local zero-copy path and its remote paths
// (stream: bytes on TCP beside gRPC control; remote: bytes over gRPC; ucx: UCX one-sided), against
// redis-server SET/GET of the same bytes with the same number of clients, all in one run. Then
// batched remote puts/gets of --batch-pages pages per call against a raw TCP socket loop moving
// the same bytes between two processes (pagoda_raw_socket_peer), one round trip per batch. All
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
#include <functional>
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
#include "pagoda/service/stream_wire.h"
#include "raw_command.h"
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
    // Reported, not fatal: the run goes on and the servers are stopped at the end.
    std::fprintf(stderr, "bench: %d failed operations in this phase\n", errors.load());
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

// Batched rows: GiB/s of `reps` timed calls (median), each moving `bytes`; -1 if a call failed.
double BatchRate(int reps, uint64_t bytes, const std::function<bool(int)>& call) {
  std::vector<double> rates;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    if (!call(r)) return -1;  // reported in the row; the servers are still stopped
    rates.push_back(double(bytes) / std::chrono::duration<double>(Clock::now() - t0).count() /
                    double(1ull << 30));
  }
  return Median(rates);
}

// The raw baseline: one TCP connection to pagoda_raw_socket_peer.
class RawPeer {
 public:
  static absl::StatusOr<RawPeer> Connect(int port) {
    absl::Status last;
    for (int i = 0; i < 100; ++i) {
      absl::StatusOr<int> fd = stream::ConnectTcp("127.0.0.1", port, absl::Seconds(5));
      if (fd.ok()) {
        RawPeer p;
        p.fd_ = *fd;
        if (absl::Status s = stream::ConfigureSocket(p.fd_, absl::Seconds(60)); !s.ok()) return s;
        return p;
      }
      last = fd.status();
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return last;
  }
  bool Put(absl::Span<const uint8_t> bytes) {
    RawCommand c{RawCommand::kPut, 0, bytes.size()};
    const iovec iov[2] = {{&c, sizeof(c)}, {const_cast<uint8_t*>(bytes.data()), bytes.size()}};
    uint8_t ack = 0;
    return stream::WriteAllV(fd_, {iov, 2}).ok() && stream::ReadAll(fd_, &ack, 1).ok();
  }
  bool Get(absl::Span<uint8_t> out) {
    RawCommand c{RawCommand::kGet, 0, out.size()};
    const iovec iov{&c, sizeof(c)};
    return stream::WriteAllV(fd_, {&iov, 1}).ok() &&
           stream::ReadAll(fd_, out.data(), out.size()).ok();
  }
  int fd_ = -1;
};

}  // namespace
}  // namespace pagoda::bench

int main(int argc, char** argv) {
  using namespace pagoda;
  using namespace pagoda::bench;
  CLI::App app{"pagodad vs redis-server: single-page put/get throughput and latency"};
  std::string sizes_text = "16,64,256,1024,2048";
  std::string clients_text = "1,2,4";
  std::string systems_text = "redis,pagoda-local,pagoda-stream,pagoda-remote,pagoda-ucx";
  int repeats = 3, batch_pages = 64, batch_reps = 5;
  uint64_t phase_mib = 64;
  std::string redis_bin = "redis-server";
  bool markdown = false;
  app.add_option("--sizes-kib", sizes_text, "page sizes in KiB")->capture_default_str();
  app.add_option("--clients", clients_text, "client thread counts (same for every system)")
      ->capture_default_str();
  app.add_option("--systems", systems_text, "systems of the single-page rows")
      ->capture_default_str();
  app.add_option("--phase-mib", phase_mib, "bytes each put/get phase moves, all clients")
      ->capture_default_str();
  app.add_option("--repeats", repeats, "runs per measurement (medians are reported)")
      ->capture_default_str();
  app.add_option("--batch-pages", batch_pages, "pages per call of the batched rows (0 = none)")
      ->capture_default_str();
  app.add_option("--batch-reps", batch_reps, "timed batched calls per row (median)")
      ->capture_default_str();
  app.add_option("--redis-server", redis_bin, "redis-server binary")->capture_default_str();
  app.add_flag("--markdown", markdown, "also print a markdown table");
  CLI11_PARSE(app, argc, argv);
  std::vector<uint64_t> sizes;
  std::vector<int> client_counts;
  for (absl::string_view s : absl::StrSplit(sizes_text, ',')) {
    uint64_t k = 0;
    if (!absl::SimpleAtoi(s, &k)) {
      std::cerr << "bad size " << s << "\n";
      return 2;
    }
    sizes.push_back(k << 10);
  }
  for (absl::string_view s : absl::StrSplit(clients_text, ',')) {
    int k = 0;
    if (!absl::SimpleAtoi(s, &k) || k < 1) {
      std::cerr << "bad client count " << s << "\n";
      return 2;
    }
    client_counts.push_back(k);
  }
  const std::vector<std::string> systems = absl::StrSplit(systems_text, ',');
  const bool has_redis = std::find(systems.begin(), systems.end(), "redis") != systems.end();

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
  const int raw_port = FreePort();
  absl::StatusOr<pid_t> raw_peer =
      Spawn({RAW_PEER_BIN, std::to_string(raw_port)}, dir + "/raw.log");
  if (!pagodad.ok() || !redis.ok() || !raw_peer.ok()) return 1;
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
    StopChild(*raw_peer);
    return 1;
  }
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  std::printf(
      "pagoda_service_bench: clients %s, %d repeats (medians), %llu MiB per phase, "
      "host %s, %u cpus\n",
      clients_text.c_str(), repeats, static_cast<unsigned long long>(phase_mib), host,
      std::thread::hardware_concurrency());

  auto connect = [&](const std::string& name) -> std::unique_ptr<Client> {
    ClientOptions o;
    o.target = absl::StrCat("127.0.0.1:", grpc_port);
    o.tenant = "bench";
    o.local_connections = 1;
    o.data_path = name == "pagoda-local" ? DataPathKind::kLocal : DataPathKind::kRemote;
    o.ucx = name == "pagoda-ucx";
    o.remote_stream = name == "pagoda-stream";
    absl::StatusOr<std::unique_ptr<Client>> cl = Client::Connect(o);
    if (!cl.ok()) {
      std::cerr << cl.status() << "\n";
      std::exit(1);
    }
    const std::string want = name == "pagoda-local"    ? "local"
                             : name == "pagoda-ucx"    ? "ucx"
                             : name == "pagoda-stream" ? "stream"
                                                       : "remote";
    if ((*cl)->data_path() != want) {
      std::cerr << name << ": the client got data path " << (*cl)->data_path() << "\n";
      std::exit(1);
    }
    return std::move(*cl);
  };

  // results[clients][size][system][op] = samples over repeats
  std::map<int,
           std::map<uint64_t, std::map<std::string, std::map<std::string, std::vector<Sample>>>>>
      results;
  uint64_t key_base = 1;
  for (int clients : client_counts) {
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
        for (const std::string& name : systems) {
          auto& res = results[clients][size][name];
          if (name == "redis") {
            std::vector<RespClient> rc;
            for (int c = 0; c < clients; ++c) rc.push_back(*RespClient::Connect(redis_port));
            auto key = [&](int c, uint64_t i) { return absl::StrCat("p:", size, ":", c, ":", i); };
            res["put"].push_back(RunPhase(clients, ops, size, [&](int c, uint64_t i) {
              memcpy(src[c].data(), &i, 8);
              return rc[c].Set(key(c, i), src[c]).ok();
            }));
            res["get"].push_back(RunPhase(clients, ops, size, [&](int c, uint64_t i) {
              absl::StatusOr<size_t> n = rc[c].Get(key(c, i), absl::MakeSpan(dst[c]));
              return n.ok() && *n == size;
            }));
            (void)rc[0].Command({"FLUSHALL"});
            continue;
          }
          std::vector<std::unique_ptr<Client>> pc;
          for (int c = 0; c < clients; ++c) pc.push_back(connect(name));
          const uint64_t base = key_base;
          key_base += 1;
          auto key = [&](int c, uint64_t i) { return PageKey{base, (uint64_t(c) << 40) | i}; };
          res["put"].push_back(RunPhase(clients, ops, size, [&](int c, uint64_t i) {
            memcpy(src[c].data(), &i, 8);
            PutPage p{key(c, i), layout.Id(), src[c]};
            absl::Status st = pc[c]->Put({&p, 1})[0];
            if (!st.ok()) std::cerr << name << " put: " << st << "\n";
            return st.ok();
          }));
          res["get"].push_back(RunPhase(clients, ops, size, [&](int c, uint64_t i) {
            GetPage g{key(c, i), absl::MakeSpan(dst[c])};
            GetResult gr = pc[c]->Get({&g, 1})[0];
            if (!gr.status.ok()) std::cerr << name << " get: " << gr.status << "\n";
            uint64_t first = 0;
            memcpy(&first, dst[c].data(), 8);
            return gr.status.ok() && first == i;  // and the checksum was verified by the client
          }));
          for (int c = 0; c < clients; ++c) {  // free the host tier for the next run (untimed)
            std::vector<PageKey> keys;
            for (uint64_t i = 0; i < ops; ++i) keys.push_back(key(c, i));
            (void)pc[c]->Remove(keys);
          }
        }
      }
    }
  }

  std::string md =
      "| clients | page | op | redis GiB/s | system | GiB/s | x redis | p50 / p99 us |\n"
      "|---|---|---|---|---|---|---|---|\n";
  for (int clients : client_counts) {
    std::printf("\n%d client(s)\n%-8s %-14s %-4s %10s %10s %10s %12s\n", clients, "page", "system",
                "op", "GiB/s", "p50 us", "p99 us", "x redis");
    for (uint64_t size : sizes) {
      for (const char* op : {"put", "get"}) {
        std::map<std::string, Sample> med;
        for (const std::string& sys : systems) {
          std::vector<double> g, p50, p99;
          for (const Sample& s : results[clients][size][sys][op]) {
            g.push_back(s.gib_s);
            p50.push_back(s.p50_us);
            p99.push_back(s.p99_us);
          }
          med[sys] = {Median(g), Median(p50), Median(p99)};
        }
        for (const std::string& sys : systems) {
          const double x = has_redis ? med[sys].gib_s / med["redis"].gib_s : 0;
          std::printf("%-8s %-14s %-4s %10.2f %10.1f %10.1f %12.2f\n",
                      absl::StrCat(size >> 10, "KiB").c_str(), sys.c_str(), op, med[sys].gib_s,
                      med[sys].p50_us, med[sys].p99_us, x);
          if (sys != "redis") {
            md += absl::StrFormat("| %d | %d KiB | %s | %.2f | %s | %.2f | %.2fx | %.0f / %.0f |\n",
                                  clients, size >> 10, op, med["redis"].gib_s, sys, med[sys].gib_s,
                                  x, med[sys].p50_us, med[sys].p99_us);
          }
        }
      }
    }
  }

  // Batched: one client, `batch_pages` pages per call, against the raw socket loop.
  std::string batch_md;
  if (batch_pages > 0) {
    absl::StatusOr<RawPeer> raw = RawPeer::Connect(raw_port);
    if (!raw.ok()) {
      std::cerr << "raw peer: " << raw.status() << "\n";
      return 1;
    }
    std::unique_ptr<Client> stream_client = connect("pagoda-stream");
    std::unique_ptr<Client> grpc_client = connect("pagoda-remote");
    std::printf("\nbatched: %d pages per call, 1 client, median of %d calls\n", batch_pages,
                batch_reps);
    std::printf("%-8s %-4s %10s %14s %8s %14s %8s\n", "page", "op", "raw GiB/s", "stream GiB/s",
                "x raw", "gRPC GiB/s", "x raw");
    batch_md =
        "| page | op | raw socket GiB/s | stream GiB/s (x raw) | gRPC bytes GiB/s (x raw) |\n"
        "|---|---|---|---|---|\n";
    for (uint64_t size : sizes) {
      const PageLayout layout = LayoutFor(size);
      const uint64_t total = size * uint64_t(batch_pages);
      std::vector<uint8_t> src(total), dst(total);
      for (uint64_t i = 0; i < total; ++i) src[i] = static_cast<uint8_t>(i * 131 + 3);
      std::map<std::string, std::map<std::string, double>> rate;
      (void)raw->Put(src);  // warm the peer's buffer
      rate["raw"]["put"] = BatchRate(batch_reps, total, [&](int) { return raw->Put(src); });
      rate["raw"]["get"] =
          BatchRate(batch_reps, total, [&](int) { return raw->Get(absl::MakeSpan(dst)); });
      for (auto& [name, c] : std::map<std::string, Client*>{{"stream", stream_client.get()},
                                                            {"grpc", grpc_client.get()}}) {
        const uint64_t base = key_base++;
        auto pages_of = [&](int rep) {
          std::vector<PutPage> puts;
          for (int i = 0; i < batch_pages; ++i) {
            puts.push_back({PageKey{base, (uint64_t(rep) << 32) | uint64_t(i)}, layout.Id(),
                            absl::MakeConstSpan(src).subspan(uint64_t(i) * size, size)});
          }
          return puts;
        };
        // Each rep puts fresh pages, reads them back and removes them (the host tier stays
        // nearly empty: segments of other page sizes stay with their classes).
        std::vector<double> put_rates, get_rates;
        for (int rep = 0; rep < batch_reps; ++rep) {
          std::vector<PutPage> puts = pages_of(rep);
          put_rates.push_back(BatchRate(1, total, [&](int) {
            for (const absl::Status& s : c->Put(puts)) {
              if (!s.ok()) {
                std::cerr << name << " batched put: " << s << "\n";
                return false;
              }
            }
            return true;
          }));
          get_rates.push_back(BatchRate(1, total, [&](int) {
            std::vector<GetPage> gets;
            for (int i = 0; i < batch_pages; ++i) {
              gets.push_back({puts[i].key, absl::MakeSpan(dst).subspan(uint64_t(i) * size, size)});
            }
            for (const GetResult& g : c->Get(gets)) {
              if (!g.status.ok()) {
                std::cerr << name << " batched get: " << g.status << "\n";
                return false;
              }
            }
            return std::memcmp(dst.data(), src.data(), total) == 0;
          }));
          std::vector<PageKey> keys;
          for (const PutPage& p : puts) keys.push_back(p.key);
          (void)c->Remove(keys);
        }
        rate[name]["put"] = Median(put_rates);
        rate[name]["get"] = Median(get_rates);
      }
      for (const char* op : {"put", "get"}) {
        const double r = rate["raw"][op], st = rate["stream"][op], g = rate["grpc"][op];
        std::printf("%-8s %-4s %10.2f %14.2f %8.2f %14.2f %8.2f\n",
                    absl::StrCat(size >> 10, "KiB").c_str(), op, r, st, st / r, g, g / r);
        batch_md += absl::StrFormat("| %d KiB | %s | %.2f | %.2f (%.2fx) | %.2f (%.2fx) |\n",
                                    size >> 10, op, r, st, st / r, g, g / r);
      }
    }
  }
  if (markdown) std::printf("\n%s\n%s", md.c_str(), batch_md.c_str());
  const int rc_p = StopChild(*pagodad);
  StopChild(*redis);
  StopChild(*raw_peer);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  if (rc_p != 0) {
    std::fprintf(stderr, "pagodad exited with %d\n", rc_p);
    return 1;
  }
  return 0;
}
