// Placement of pages on nodes by (weighted) rendezvous hashing of the 128-bit page key: every
// client ranks the live nodes for a key the same way, with no coordination, and a node joining or
// leaving moves only the keys it wins or held.
#ifndef PAGODA_CLUSTER_PLACEMENT_H_
#define PAGODA_CLUSTER_PLACEMENT_H_

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/numeric/int128.h"
#include "pagoda/cluster/node_info.h"

namespace pagoda::cluster {

// The rendezvous score hash of (key, node): stable across processes, machines and builds (XXH3,
// fixed seeds), so every client agrees.
uint64_t RendezvousHash(absl::uint128 key, uint64_t node_seed);
uint64_t NodeSeed(std::string_view node_id);

// An immutable node set ranked per key. Thread safety: immutable after construction; safe for
// concurrent use.
class Placement {
 public:
  // Nodes are kept sorted by id; a later duplicate id replaces an earlier one.
  explicit Placement(std::vector<NodeInfo> nodes);

  // Indices into nodes() of the best `count` nodes for `key`, best first (fewer when the set is
  // smaller). Score: weight / -ln(u) with u uniform from RendezvousHash (weighted rendezvous);
  // ties break by id. With equal weights that order is the hash's order, ranked without the log.
  // Cost: O(size()) hashes per call.
  std::vector<size_t> Rank(absl::uint128 key, size_t count) const;

  const std::vector<NodeInfo>& nodes() const { return nodes_; }
  // Index of node `id`, or -1.
  int Find(std::string_view id) const;
  size_t size() const { return nodes_.size(); }

 private:
  std::vector<NodeInfo> nodes_;
  std::vector<uint64_t> seeds_;
  bool uniform_weights_ = true;  // every node has the same weight: rank by the hash alone
};

}  // namespace pagoda::cluster

#endif  // PAGODA_CLUSTER_PLACEMENT_H_
