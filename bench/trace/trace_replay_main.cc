// Trace replay benchmark (issue 15): Pagoda as a prefix cache under a real request trace.
// Starts its own etcd and pagodad processes on 127.0.0.1 and replays one trace against
//   single    one pagodad (host + SSD tiers as given), local zero-copy path;
//   host-only the same node without its SSD tier (the reference for what the SSD tier adds);
//   pooled    three pagodad nodes in one cluster through ClusterClient (rendezvous placement,
//             R=1; node-0 over the local path, the others over the remote path);
//   per-node  three standalone pagodad nodes, each its own cache, requests routed to the node
//             holding the longest prefix (ties: the least-loaded node);
// each against one ideal LRU prefix cache of the same total capacity and the unbounded cache,
// both simulated here on the same trace. Then the hit-rate-vs-capacity curve (pooled and
// per-node, host tier only, unpaced, at --curve-kv-bytes-per-token: hit rates depend on blocks,
// not bytes) and a kill -9 run (pooled, R=2, one node killed when half the requests are issued).
//
//   pagoda_trace_replay --trace conversation_trace.jsonl [--requests N] [--kv-bytes-per-token B]
//       [--host-blocks N] [--ssd-blocks N] [--compress X] [--inflight N] [--prefill-us-per-token U]
//       [--setups single,host-only,pooled,per-node] [--curve 2000,8000,...] [--kill]
//       [--curve-csv out.csv]
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "kvstore/cluster/testing/etcd_process.h"
#include "lru_reference.h"
#include "mooncake_trace.h"
#include "pagoda/client/cluster_client.h"
#include "pagodad_process.h"
#include "replay.h"

namespace {

using pagoda::Client;
using pagoda::PageLayout;
using pagoda::testing::PagodadProcess;
using pagoda::trace::ReplayOptions;
using pagoda::trace::ReplayReport;

struct Flags {
  std::string trace;
  size_t requests = 0;
  uint32_t kv_bytes_per_token = 1024;
  uint32_t block_tokens = 512;
  uint64_t host_blocks = 4096;
  uint64_t ssd_blocks = 0;
  double compress = 10;
  int inflight = 8;
  double prefill_us_per_token = 0;
  size_t batch = 16;
  std::string setups = "single,host-only,pooled,per-node";
  std::string curve;
  uint32_t curve_kv_bytes_per_token = 64;
  std::string curve_csv;
  bool kill = false;
};

// fp16 K+V of `block_tokens` tokens at `kv_bytes` per token: 4 * kv_heads * head_dim = kv_bytes.
absl::StatusOr<PageLayout> BlockLayout(uint32_t kv_bytes, uint32_t block_tokens) {
  PageLayout l{pagoda::DType::kFp16, 1, kv_bytes / 4, block_tokens};
  if (kv_bytes % 512 == 0) l = PageLayout{pagoda::DType::kFp16, kv_bytes / 512, 128, block_tokens};
  if (kv_bytes % 32 != 0) {
    return absl::InvalidArgumentError("kv bytes per token must be a multiple of 32");
  }
  if (absl::Status s = l.Validate(); !s.ok()) return s;
  return l;
}

std::string NodeYaml(const PageLayout& l, uint64_t host_blocks, uint64_t ssd_blocks,
                     const std::string& cluster_prefix) {
  const uint64_t page = l.PageBytes();
  // Whole 4 MiB segments (the host tier's unit), at least one.
  const uint64_t seg = std::max<uint64_t>(4ULL << 20, page);
  const uint64_t host = std::max<uint64_t>(seg, (host_blocks * page + seg - 1) / seg * seg);
  std::string y = absl::StrFormat(R"(
server: {grpc_host: 127.0.0.1, grpc_port: 0, http_host: 127.0.0.1, http_port: 0, ucx: false}
store:
  host_bytes: %u
  ssd_bytes: %u
  persist_on_shutdown: false
  layouts:
    - {dtype: fp16, kv_heads: %u, head_dim: %u, page_tokens: %u}
logging: {level: warn}
)",
                                  host, ssd_blocks * page, l.kv_heads, l.head_dim, l.page_tokens);
  if (!cluster_prefix.empty()) {
    y += absl::StrCat("cluster: {lease_ttl_s: 3, prefix: ", cluster_prefix, "}\n");
  }
  return y;
}

[[noreturn]] void Die(const std::string& what, const absl::Status& s) {
  std::fprintf(stderr, "%s: %s\n", what.c_str(), s.ToString().c_str());
  std::exit(1);
}

std::vector<std::unique_ptr<PagodadProcess>> StartNodes(int n, const std::string& yaml,
                                                        const std::string& etcd) {
  std::vector<std::unique_ptr<PagodadProcess>> nodes;
  for (int i = 0; i < n; ++i) {
    PagodadProcess::Options o;
    o.config_yaml = yaml;
    if (!etcd.empty()) o.extra_args = {"--etcd", etcd, "--node-id", absl::StrCat("node-", i)};
    absl::StatusOr<std::unique_ptr<PagodadProcess>> p = PagodadProcess::Start(o);
    if (!p.ok()) Die("pagodad", p.status());
    nodes.push_back(std::move(*p));
  }
  return nodes;
}

std::unique_ptr<Client> Connect(const PagodadProcess& node) {
  pagoda::ClientOptions o = node.ClientOpts("trace", pagoda::DataPathKind::kAuto);
  o.async_threads = 1;
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(o);
  if (!c.ok()) Die("connect", c.status());
  return std::move(*c);
}

std::unique_ptr<pagoda::ClusterClient> ConnectCluster(const std::string& etcd,
                                                      const std::string& prefix, int replication,
                                                      size_t nodes) {
  pagoda::ClusterClientOptions co;
  co.etcd_endpoints = {etcd};
  co.prefix = prefix;
  co.node.tenant = "trace";
  co.node.async_threads = 1;
  co.local_node_id = "node-0";
  co.replication = replication;
  co.node_timeout = absl::Seconds(5);
  absl::StatusOr<std::unique_ptr<pagoda::ClusterClient>> c = pagoda::ClusterClient::Connect(co);
  if (!c.ok()) Die("cluster connect", c.status());
  for (int i = 0; i < 400 && (*c)->LiveNodes().size() < nodes; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  return std::move(*c);
}

struct Row {
  std::string setup;
  uint64_t capacity_blocks;
  ReplayReport r;
  double max_rate;       // unbounded cache's token hit rate
  double lru_rate;       // ideal LRU of the same total capacity
  double held_lru_rate;  // ideal LRU of as many blocks as the tiers held at the end
};

void PrintHeader() {
  std::printf("%-10s %8s %8s %7s %6s %6s %6s %8s %8s %8s %7s %15s %15s %15s %9s %6s %6s %6s\n",
              "setup", "cap_blk", "held_blk", "hit", "/max", "/lru", "/lruh", "hits_hst",
              "hits_ssd", "MiB/s", "pace_x", "lookup p50/p99", "get p50/p99", "put p50/p99",
              "saved_s", "wrong", "lost", "errors");
}

void PrintRow(const Row& w) {
  const ReplayReport& r = w.r;
  const double mib = (r.verified_bytes + r.put_bytes) / 1048576.0 / std::max(1e-9, r.wall_s);
  auto ms = [](const pagoda::trace::Latencies& l) {
    return absl::StrFormat("%.2f/%.2f", l.Percentile(0.5) / 1000, l.Percentile(0.99) / 1000);
  };
  std::printf(
      "%-10s %8lu %8lu %7.4f %6.3f %6.3f %6.3f %8lu %8lu %8.0f %7.1f %15s %15s %15s %9.1f %6lu "
      "%6lu "
      "%6lu\n",
      w.setup.c_str(), static_cast<unsigned long>(w.capacity_blocks),
      static_cast<unsigned long>(r.held_host + r.held_ssd), r.token_hit_rate(),
      r.token_hit_rate() / std::max(1e-12, w.max_rate),
      r.token_hit_rate() / std::max(1e-12, w.lru_rate),
      r.token_hit_rate() / std::max(1e-12, w.held_lru_rate),
      static_cast<unsigned long>(r.tier_hits_host), static_cast<unsigned long>(r.tier_hits_ssd),
      mib, r.pace(), ms(r.lookup).c_str(), ms(r.get).c_str(), ms(r.put).c_str(), r.prefill_saved_s,
      static_cast<unsigned long>(r.wrong_pages), static_cast<unsigned long>(r.lost_hits),
      static_cast<unsigned long>(r.lookup_errors + r.get_errors + r.put_errors));
  for (const std::string& e : r.first_errors) std::printf("    error: %s\n", e.c_str());
  std::fflush(stdout);
}

class Bench {
 public:
  Bench(const Flags& f, std::vector<pagoda::trace::TraceRequest> reqs)
      : f_(f), reqs_(std::move(reqs)) {
    for (const auto& r : reqs_) keys_.push_back(pagoda::trace::ChainKeys(r));
    max_rate_ = pagoda::trace::Simulate(reqs_, keys_, 0, f_.block_tokens).token_hit_rate();
  }

  double LruRate(uint64_t cap) {
    return pagoda::trace::Simulate(reqs_, keys_, cap, f_.block_tokens).token_hit_rate();
  }

  ReplayOptions Opts(const PageLayout& l, double compress) const {
    ReplayOptions o;
    o.block_tokens = f_.block_tokens;
    o.layout = l.Id();
    o.page_bytes = l.PageBytes();
    o.compress = compress;
    o.inflight = f_.inflight;
    o.prefill_us_per_token = f_.prefill_us_per_token;
    o.batch_pages = f_.batch;
    return o;
  }

  // One setup at `host_blocks` / `ssd_blocks` total over its nodes.
  Row Run(const std::string& setup, const PageLayout& l, uint64_t host_blocks, uint64_t ssd_blocks,
          double compress, int replication = 1, bool kill = false) {
    ReplayOptions o = Opts(l, compress);
    ReplayReport rep;
    const uint64_t cap = host_blocks + ssd_blocks;
    if (setup == "single" || setup == "host-only") {
      auto nodes = StartNodes(1, NodeYaml(l, host_blocks, ssd_blocks, ""), "");
      auto c = Connect(*nodes[0]);
      pagoda::trace::SingleStoreTarget t(c.get());
      rep = pagoda::trace::Replay(reqs_, keys_, t, o);
    } else if (setup == "pooled") {
      auto etcd = pagoda::cluster::testing::EtcdProcess::Start();
      if (!etcd.ok()) Die("etcd", etcd.status());
      const std::string prefix = absl::StrCat("/trace/", ++runs_, "/");
      auto nodes =
          StartNodes(3, NodeYaml(l, host_blocks / 3, ssd_blocks / 3, prefix), (*etcd)->endpoint());
      auto c = ConnectCluster((*etcd)->endpoint(), prefix, replication, nodes.size());
      pagoda::trace::SingleStoreTarget t(c.get());
      if (kill) {
        o.hook_at = reqs_.size() / 2;
        o.hook = [&nodes, half = o.hook_at] {
          std::printf("    kill -9 node-2 (pid %d) at request %zu\n", nodes[2]->pid(), half);
          (void)nodes[2]->Stop(SIGKILL, 10);
        };
      }
      rep = pagoda::trace::Replay(reqs_, keys_, t, o);
      if (kill) {
        pagoda::ClusterReadStats s = c->read_stats();
        std::printf(
            "    cluster reads: primary %lu, replica fallback %lu, misses %lu, "
            "unreachable calls %lu\n",
            static_cast<unsigned long>(s.primary_hits), static_cast<unsigned long>(s.replica_hits),
            static_cast<unsigned long>(s.misses), static_cast<unsigned long>(s.unreachable));
      }
    } else if (setup == "per-node") {
      auto nodes = StartNodes(3, NodeYaml(l, host_blocks / 3, ssd_blocks / 3, ""), "");
      std::vector<std::unique_ptr<Client>> cs;
      std::vector<Client*> raw;
      for (auto& n : nodes) {
        cs.push_back(Connect(*n));
        raw.push_back(cs.back().get());
      }
      pagoda::trace::LongestPrefixRouter t(raw);
      rep = pagoda::trace::Replay(reqs_, keys_, t, o);
    } else {
      Die("setup", absl::InvalidArgumentError("unknown setup '" + setup + "'"));
    }
    const double held_rate = LruRate(std::max<uint64_t>(1, rep.held_host + rep.held_ssd));
    return Row{setup, cap, std::move(rep), max_rate_, LruRate(cap), held_rate};
  }

  double max_rate() const { return max_rate_; }
  size_t requests() const { return reqs_.size(); }

 private:
  const Flags f_;
  std::vector<pagoda::trace::TraceRequest> reqs_;
  std::vector<std::vector<pagoda::PageKey>> keys_;
  double max_rate_ = 0;
  int runs_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  CLI::App app{"Pagoda trace replay (Mooncake format)"};
  app.add_option("--trace", f.trace, "Mooncake-format JSONL trace")->required();
  app.add_option("--requests", f.requests, "first N requests only (0 = all)");
  app.add_option("--kv-bytes-per-token", f.kv_bytes_per_token, "KV bytes per token (x32)");
  app.add_option("--block-tokens", f.block_tokens, "tokens per trace block (hash id)");
  app.add_option("--host-blocks", f.host_blocks, "host-tier capacity in blocks, all nodes");
  app.add_option("--ssd-blocks", f.ssd_blocks, "SSD-tier capacity in blocks, all nodes");
  app.add_option("--compress", f.compress, "trace time / replay time (0 = unpaced)");
  app.add_option("--inflight", f.inflight, "requests in flight at most");
  app.add_option("--prefill-us-per-token", f.prefill_us_per_token, "simulated prefill cost");
  app.add_option("--batch", f.batch, "pages per Get/Put call");
  app.add_option("--setups", f.setups, "comma-separated: single,host-only,pooled,per-node");
  app.add_option("--curve", f.curve, "comma-separated total host capacities (blocks)");
  app.add_option("--curve-kv-bytes-per-token", f.curve_kv_bytes_per_token,
                 "KV bytes per token of the curve runs");
  app.add_option("--curve-csv", f.curve_csv, "write the curve here (for plot_curve.py)");
  app.add_flag("--kill", f.kill, "also run pooled R=2 with node-2 killed (-9) halfway");
  CLI11_PARSE(app, argc, argv);

  absl::StatusOr<std::vector<pagoda::trace::TraceRequest>> reqs = pagoda::trace::LoadTrace(f.trace);
  if (!reqs.ok()) Die("trace", reqs.status());
  if (f.requests > 0 && reqs->size() > f.requests) reqs->resize(f.requests);
  absl::StatusOr<PageLayout> layout = BlockLayout(f.kv_bytes_per_token, f.block_tokens);
  if (!layout.ok()) Die("layout", layout.status());
  Bench bench(f, std::move(*reqs));
  std::printf(
      "trace %s: %zu requests; block %u tokens x %u B/token = %lu B pages; unbounded "
      "cache token hit rate %.4f\n",
      f.trace.c_str(), bench.requests(), f.block_tokens, f.kv_bytes_per_token,
      static_cast<unsigned long>(layout->PageBytes()), bench.max_rate());
  std::printf(
      "host %lu blocks, ssd %lu blocks (totals over the nodes), compress %.1fx, "
      "inflight %d, prefill %.2f us/token, batch %zu\n",
      static_cast<unsigned long>(f.host_blocks), static_cast<unsigned long>(f.ssd_blocks),
      f.compress, f.inflight, f.prefill_us_per_token, f.batch);
  std::printf(
      "hit = token hit rate served with verified bytes; /max vs the unbounded cache; /lru "
      "vs one ideal LRU of cap_blk; /lruh vs one ideal LRU of held_blk (the pages the "
      "tiers held at the end: watermarks keep tiers below capacity); latencies in ms per "
      "request (all its gets / puts)\n");
  PrintHeader();
  for (const std::string& s :
       std::vector<std::string>(absl::StrSplit(f.setups, ',', absl::SkipEmpty()))) {
    const uint64_t ssd = s == "host-only" ? 0 : f.ssd_blocks;
    Row row = bench.Run(s, *layout, f.host_blocks, ssd, f.compress);
    PrintRow(row);
    std::printf(
        "    lag p50/p99 %.1f/%.1f ms, requests %lu, failed %lu, verified %.2f GiB, "
        "put %.2f GiB, lookup-promised %lu blocks, wall %.1f s\n",
        row.r.start_lag.Percentile(0.5) / 1000, row.r.start_lag.Percentile(0.99) / 1000,
        static_cast<unsigned long>(row.r.requests),
        static_cast<unsigned long>(row.r.failed_requests), row.r.verified_bytes / 1073741824.0,
        row.r.put_bytes / 1073741824.0, static_cast<unsigned long>(row.r.lookup_hit_blocks),
        row.r.wall_s);
  }
  if (f.kill) {
    std::printf("\nkill -9 run: pooled, R=2, node-2 killed when request %zu is issued\n",
                bench.requests() / 2);
    PrintHeader();
    Row row = bench.Run("pooled", *layout, f.host_blocks, f.ssd_blocks, f.compress, 2, true);
    PrintRow(row);
    std::printf("    requests %lu, failed %lu, request p50/p99/max %.1f/%.1f/%.1f ms\n",
                static_cast<unsigned long>(row.r.requests),
                static_cast<unsigned long>(row.r.failed_requests),
                row.r.request.Percentile(0.5) / 1000, row.r.request.Percentile(0.99) / 1000,
                row.r.request.Percentile(1.0) / 1000);
  }
  if (!f.curve.empty()) {
    absl::StatusOr<PageLayout> cl = BlockLayout(f.curve_kv_bytes_per_token, f.block_tokens);
    if (!cl.ok()) Die("curve layout", cl.status());
    std::printf("\nhit rate vs total host capacity (%lu B pages, unpaced, host tier only)\n",
                static_cast<unsigned long>(cl->PageBytes()));
    std::printf("%10s %10s %10s %10s %10s %12s %10s %12s\n", "cap_blk", "ideal_lru", "pooled",
                "per_node", "unbounded", "pooled/lru", "held_blk", "pooled/lruh");
    std::ostringstream csv;
    csv << "capacity_blocks,ideal_lru,pooled,per_node,unbounded,pooled_held_blocks,lru_at_held\n";
    for (const std::string& c :
         std::vector<std::string>(absl::StrSplit(f.curve, ',', absl::SkipEmpty()))) {
      const uint64_t cap = std::stoull(c);
      Row pooled = bench.Run("pooled", *cl, cap, 0, 0);
      Row per = bench.Run("per-node", *cl, cap, 0, 0);
      const double p = pooled.r.token_hit_rate(), n = per.r.token_hit_rate();
      const uint64_t held = pooled.r.held_host + pooled.r.held_ssd;
      std::printf("%10lu %10.4f %10.4f %10.4f %10.4f %12.3f %10lu %12.3f   (wrong %lu/%lu)\n",
                  static_cast<unsigned long>(cap), pooled.lru_rate, p, n, bench.max_rate(),
                  p / std::max(1e-12, pooled.lru_rate), static_cast<unsigned long>(held),
                  p / std::max(1e-12, pooled.held_lru_rate),
                  static_cast<unsigned long>(pooled.r.wrong_pages),
                  static_cast<unsigned long>(per.r.wrong_pages));
      std::fflush(stdout);
      csv << cap << "," << pooled.lru_rate << "," << p << "," << n << "," << bench.max_rate() << ","
          << held << "," << pooled.held_lru_rate << "\n";
    }
    if (!f.curve_csv.empty()) {
      FILE* out = std::fopen(f.curve_csv.c_str(), "w");
      if (out == nullptr) Die("curve csv", absl::NotFoundError(f.curve_csv));
      std::fputs(csv.str().c_str(), out);
      std::fclose(out);
    }
  }
  return 0;
}
