// Placement cost and key movement of rendezvous hashing, against the baseline of plain modulo
// hashing (hash(key) % N) measured in the same run.
//
//   pagoda_placement_bench [--keys N] [--reps R]
//
// Per node count it prints ns per key to place (1 and 2 replicas, and the full Router::Route
// that clients call per page), each as a ratio to modulo placement, and the share of keys that
// move when one node joins: rendezvous moves ~1/(N+1) of the keys, modulo almost all of them.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "pagoda/cluster/placement.h"
#include "pagoda/cluster/router.h"
#define XXH_INLINE_ALL
#include "xxhash.h"

namespace {

using pagoda::cluster::NodeInfo;
using pagoda::cluster::Placement;

std::vector<NodeInfo> Nodes(int n) {
  std::vector<NodeInfo> out;
  for (int i = 0; i < n; ++i) {
    NodeInfo node;
    node.id = absl::StrCat("gpu-node-", i);
    node.address = absl::StrCat("10.0.", i / 256, ".", i % 256);
    node.grpc_port = 50051;
    out.push_back(node);
  }
  return out;
}

uint64_t ModuloOwner(absl::uint128 key, int n) {
  const uint64_t parts[2] = {absl::Uint128Low64(key), absl::Uint128High64(key)};
  return XXH3_64bits(parts, sizeof(parts)) % static_cast<uint64_t>(n);
}

template <typename Fn>
double NsPerKey(const std::vector<absl::uint128>& keys, int reps, Fn&& fn) {
  std::vector<double> runs;
  uint64_t sink = 0;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (absl::uint128 k : keys) sink += fn(k);
    const auto t1 = std::chrono::steady_clock::now();
    runs.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count() / keys.size());
  }
  if (sink == 42) std::printf(" ");  // keeps the loop from being optimized away
  std::sort(runs.begin(), runs.end());
  return runs[runs.size() / 2];  // median
}

}  // namespace

int main(int argc, char** argv) {
  size_t num_keys = 200000;
  int reps = 5;
  CLI::App app{"Rendezvous placement vs. modulo hashing"};
  app.add_option("--keys", num_keys, "keys placed")->check(CLI::PositiveNumber);
  app.add_option("--reps", reps, "repetitions (medians)")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  std::mt19937_64 rng(42);
  std::vector<absl::uint128> keys(num_keys);
  for (absl::uint128& k : keys) k = absl::MakeUint128(rng(), rng());

  std::printf("keys=%zu reps=%d (medians)\n", num_keys, reps);
  std::printf("%6s %10s %10s %8s %10s %8s %12s %8s %10s %10s\n", "nodes", "modulo_ns", "rank1_ns",
              "x_mod", "rank2_ns", "x_mod", "route_r2_ns", "x_mod", "moved_rdv", "moved_mod");
  for (int n : {3, 8, 32, 128}) {
    auto placement = std::make_shared<const Placement>(Nodes(n));
    pagoda::cluster::RouterOptions ro;
    ro.replication = 2;
    auto router = *pagoda::cluster::Router::Create([placement] { return placement; }, ro);

    const double mod_ns = NsPerKey(keys, reps, [n](absl::uint128 k) { return ModuloOwner(k, n); });
    const double rank1_ns =
        NsPerKey(keys, reps, [&](absl::uint128 k) { return placement->Rank(k, 1)[0]; });
    const double rank2_ns =
        NsPerKey(keys, reps, [&](absl::uint128 k) { return placement->Rank(k, 2)[1]; });
    const double route_ns =
        NsPerKey(keys, reps, [&](absl::uint128 k) { return router->Route(k).size(); });

    // Keys that change owner when node n joins.
    Placement grown(Nodes(n + 1));
    size_t moved_rdv = 0, moved_mod = 0;
    for (absl::uint128 k : keys) {
      moved_rdv +=
          placement->nodes()[placement->Rank(k, 1)[0]].id != grown.nodes()[grown.Rank(k, 1)[0]].id;
      moved_mod += ModuloOwner(k, n) != ModuloOwner(k, n + 1);
    }
    std::printf("%6d %10.1f %10.1f %8.1f %10.1f %8.1f %12.1f %8.1f %9.1f%% %9.1f%%\n", n, mod_ns,
                rank1_ns, rank1_ns / mod_ns, rank2_ns, rank2_ns / mod_ns, route_ns,
                route_ns / mod_ns, 100.0 * moved_rdv / keys.size(),
                100.0 * moved_mod / keys.size());
  }
  return 0;
}
