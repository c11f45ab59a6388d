// What cluster routing costs a client: Put and Get throughput of ClusterClient (etcd membership,
// rendezvous routing, per-node batches) against a plain Client talking to one pagodad, measured
// in the same run on the same pages. Starts its own etcd and three pagodad processes on
// 127.0.0.1 (remote gRPC path for both clients).
//
//   pagoda_cluster_client_bench [--pages N] [--batch B] [--reps R]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kvstore/cluster/testing/etcd_process.h"
#include "pagoda/client/cluster_client.h"
#include "pagodad_process.h"

namespace {

using pagoda::Client;
using pagoda::GetPage;
using pagoda::PageKey;
using pagoda::PutPage;

const pagoda::PageLayout kLayout{pagoda::DType::kFp16, 8, 128, 16};  // 64 KiB pages

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::vector<PageKey> Keys(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<PageKey> k(n);
  for (PageKey& x : k) x = PageKey{rng(), rng()};
  return k;
}

// Pages per second of putting `keys` in batches; fails loudly on any error.
double PutRate(Client& c, const std::vector<PageKey>& keys, size_t batch,
               const std::vector<uint8_t>& bytes) {
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < keys.size(); i += batch) {
    std::vector<PutPage> pages;
    for (size_t j = i; j < std::min(keys.size(), i + batch); ++j) {
      pages.push_back({keys[j], kLayout.Id(), bytes});
    }
    for (const absl::Status& s : c.Put(pages)) {
      if (!s.ok()) {
        std::fprintf(stderr, "put failed: %s\n", s.ToString().c_str());
        std::exit(1);
      }
    }
  }
  return keys.size() / Seconds(t0);
}

double GetRate(Client& c, const std::vector<PageKey>& keys, size_t batch) {
  const size_t size = kLayout.PageBytes();
  std::vector<uint8_t> buf(batch * size);
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < keys.size(); i += batch) {
    std::vector<GetPage> gets;
    for (size_t j = i; j < std::min(keys.size(), i + batch); ++j) {
      gets.push_back({keys[j], absl::Span<uint8_t>(buf.data() + (j - i) * size, size)});
    }
    for (const pagoda::GetResult& r : c.Get(gets)) {
      if (!r.status.ok()) {
        std::fprintf(stderr, "get failed: %s\n", r.status.ToString().c_str());
        std::exit(1);
      }
    }
  }
  return keys.size() / Seconds(t0);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  size_t pages = 1024, batch = 64;
  int reps = 5;
  CLI::App app{"ClusterClient vs. a direct Client over real etcd + pagodad processes"};
  app.add_option("--pages", pages, "pages per run")->check(CLI::PositiveNumber);
  app.add_option("--batch", batch, "pages per call")->check(CLI::PositiveNumber);
  app.add_option("--reps", reps, "repetitions (medians)")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  auto etcd = pagoda::cluster::testing::EtcdProcess::Start();
  if (!etcd.ok()) {
    std::fprintf(stderr, "etcd: %s\n", etcd.status().ToString().c_str());
    return 1;
  }
  std::vector<std::unique_ptr<pagoda::testing::PagodadProcess>> nodes;
  for (int i = 0; i < 3; ++i) {
    pagoda::testing::PagodadProcess::Options o;
    o.config_yaml = pagoda::testing::TestConfigYaml() + "cluster: {lease_ttl_s: 5}\n";
    o.extra_args = {"--etcd", (*etcd)->endpoint(), "--node-id", absl::StrCat("node-", i)};
    auto n = pagoda::testing::PagodadProcess::Start(o);
    if (!n.ok()) {
      std::fprintf(stderr, "pagodad: %s\n", n.status().ToString().c_str());
      return 1;
    }
    nodes.push_back(std::move(*n));
  }
  pagoda::ClientOptions direct_opts = nodes[0]->ClientOpts("bench", pagoda::DataPathKind::kRemote);
  auto direct = Client::Connect(direct_opts);
  pagoda::ClusterClientOptions co;
  co.etcd_endpoints = {(*etcd)->endpoint()};
  co.node.tenant = "bench";
  co.node_timeout = absl::Seconds(10);
  auto r1 = pagoda::ClusterClient::Connect(co);
  co.replication = 2;
  auto r2 = pagoda::ClusterClient::Connect(co);
  if (!direct.ok() || !r1.ok() || !r2.ok()) {
    std::fprintf(stderr, "connect failed\n");
    return 1;
  }
  for (int i = 0; i < 200 && (*r1)->LiveNodes().size() < 3; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::vector<uint8_t> bytes(kLayout.PageBytes());
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 131 + 7);

  std::vector<double> put_d, put_1, put_2, get_d, get_1, get_2;
  for (int rep = 0; rep < reps; ++rep) {
    // Fresh keys per rep and client: pages are immutable.
    auto kd = Keys(pages, 1000 + rep), k1 = Keys(pages, 2000 + rep), k2 = Keys(pages, 3000 + rep);
    put_d.push_back(PutRate(**direct, kd, batch, bytes));
    put_1.push_back(PutRate(**r1, k1, batch, bytes));
    put_2.push_back(PutRate(**r2, k2, batch, bytes));
    get_d.push_back(GetRate(**direct, kd, batch));
    get_1.push_back(GetRate(**r1, k1, batch));
    get_2.push_back(GetRate(**r2, k2, batch));
    for (auto* c :
         {direct->get(), static_cast<Client*>(r1->get()), static_cast<Client*>(r2->get())}) {
      for (auto* keys : {&kd, &k1, &k2}) c->Remove(*keys);  // keep the host tiers from filling
    }
  }
  const double mib = kLayout.PageBytes() / 1048576.0;
  std::printf("pages=%zu batch=%zu page=%zu B reps=%d (medians; remote gRPC path)\n", pages, batch,
              kLayout.PageBytes(), reps);
  std::printf("%-28s %12s %10s %10s\n", "client", "pages/s", "MiB/s", "x direct");
  auto row = [&](const char* name, double v, double base) {
    std::printf("%-28s %12.0f %10.1f %10.2f\n", name, v, v * mib, v / base);
  };
  row("put direct (1 node)", Median(put_d), Median(put_d));
  row("put cluster R=1 (3 nodes)", Median(put_1), Median(put_d));
  row("put cluster R=2 (3 nodes)", Median(put_2), Median(put_d));
  row("get direct (1 node)", Median(get_d), Median(get_d));
  row("get cluster R=1 (3 nodes)", Median(get_1), Median(get_d));
  row("get cluster R=2 (3 nodes)", Median(get_2), Median(get_d));
  return 0;
}
