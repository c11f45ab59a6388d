#include "pagoda/cluster/replication.h"

#include <future>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"

namespace pagoda::cluster {
namespace {

struct NodeBatch {
  NodeInfo node;
  std::vector<size_t> keys;
};

// Runs fn(batch) for every batch, in parallel when there is more than one.
template <typename R, typename Fn>
std::vector<R> RunBatches(const std::vector<NodeBatch>& batches, const Fn& fn) {
  std::vector<R> results(batches.size());
  if (batches.size() == 1) {
    results[0] = fn(batches[0]);
    return results;
  }
  std::vector<std::future<R>> futures;
  futures.reserve(batches.size());
  for (const NodeBatch& b : batches) {
    futures.push_back(std::async(std::launch::async, [&fn, &b] { return fn(b); }));
  }
  for (size_t i = 0; i < futures.size(); ++i) results[i] = futures[i].get();
  return results;
}

}  // namespace

bool IsUnreachable(const absl::Status& status) {
  return absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status);
}

std::vector<absl::Status> ReplicatedWrite(Router& router, absl::Span<const absl::uint128> keys,
                                          const NodeWriteFn& write) {
  const size_t r = static_cast<size_t>(router.replication());
  std::vector<absl::Status> out(keys.size(), absl::OkStatus());
  std::vector<size_t> committed(keys.size(), 0);
  std::map<std::string, NodeBatch> by_node;
  for (size_t k = 0; k < keys.size(); ++k) {
    std::vector<NodeInfo> replicas = router.Route(keys[k]);
    if (replicas.size() < r) {
      out[k] = absl::UnavailableError(
          absl::StrCat("cluster: ", replicas.size(), " live nodes, replication needs ", r));
      continue;
    }
    for (NodeInfo& n : replicas) {
      NodeBatch& b = by_node[n.id];
      if (b.node.id.empty()) b.node = std::move(n);
      b.keys.push_back(k);
    }
  }
  std::vector<NodeBatch> batches;
  for (auto& [id, b] : by_node) batches.push_back(std::move(b));
  auto results = RunBatches<std::vector<absl::Status>>(batches, [&](const NodeBatch& b) {
    std::vector<absl::Status> st = write(b.node, b.keys);
    if (st.size() != b.keys.size()) {
      st.assign(b.keys.size(), absl::InternalError("cluster: node write returned wrong count"));
    }
    return st;
  });
  for (size_t i = 0; i < batches.size(); ++i) {
    bool unreachable = false;
    bool reached = false;
    for (size_t j = 0; j < batches[i].keys.size(); ++j) {
      const size_t k = batches[i].keys[j];
      const absl::Status& st = results[i][j];
      if (st.ok()) {
        ++committed[k];
        reached = true;
        continue;
      }
      IsUnreachable(st) ? unreachable = true : reached = true;
      if (out[k].ok()) {
        out[k] =
            absl::Status(IsUnreachable(st) ? absl::StatusCode::kUnavailable : st.code(),
                         absl::StrCat("cluster: node ", batches[i].node.id, ": ", st.message()));
      }
    }
    if (unreachable && !reached) router.ReportFailure(batches[i].node.id);
    if (reached) router.ReportSuccess(batches[i].node.id);
  }
  for (size_t k = 0; k < keys.size(); ++k) {
    if (out[k].ok() && committed[k] < r) {
      out[k] = absl::UnavailableError(
          absl::StrCat("cluster: ", committed[k], " of ", r, " copies committed"));
    }
  }
  return out;
}

std::vector<int> ReadWithFallback(Router& router, absl::Span<const absl::uint128> keys,
                                  const NodeReadFn& read) {
  std::vector<int> served(keys.size(), -1);
  std::vector<std::vector<NodeInfo>> routes(keys.size());
  size_t rounds = 0;
  for (size_t k = 0; k < keys.size(); ++k) {
    routes[k] = router.Route(keys[k]);
    rounds = std::max(rounds, routes[k].size());
  }
  std::vector<bool> done(keys.size(), false);
  for (size_t round = 0; round < rounds; ++round) {
    std::map<std::string, NodeBatch> by_node;
    for (size_t k = 0; k < keys.size(); ++k) {
      if (done[k] || round >= routes[k].size()) continue;
      NodeBatch& b = by_node[routes[k][round].id];
      if (b.node.id.empty()) b.node = routes[k][round];
      b.keys.push_back(k);
    }
    if (by_node.empty()) break;
    std::vector<NodeBatch> batches;
    for (auto& [id, b] : by_node) batches.push_back(std::move(b));
    auto results = RunBatches<std::vector<ReadOutcome>>(batches, [&](const NodeBatch& b) {
      std::vector<ReadOutcome> o = read(b.node, b.keys);
      if (o.size() != b.keys.size()) o.assign(b.keys.size(), ReadOutcome::kUnreachable);
      return o;
    });
    for (size_t i = 0; i < batches.size(); ++i) {
      bool unreachable = false;
      bool reached = false;
      for (size_t j = 0; j < batches[i].keys.size(); ++j) {
        const size_t k = batches[i].keys[j];
        switch (results[i][j]) {
          case ReadOutcome::kHit:
            served[k] = static_cast<int>(round);
            done[k] = true;
            reached = true;
            break;
          case ReadOutcome::kMiss:
            reached = true;
            break;
          case ReadOutcome::kUnreachable:
            unreachable = true;
            break;
        }
      }
      if (unreachable && !reached) router.ReportFailure(batches[i].node.id);
      if (reached) router.ReportSuccess(batches[i].node.id);
    }
  }
  return served;
}

}  // namespace pagoda::cluster
