// Replicated writes and reads with fallback over a Router, independent of how a node is called:
// the caller passes one function that runs a batch of keys against one node (the client library
// passes its per-node pagodad calls). One call per node per round; nodes are called in parallel.
#ifndef PAGODA_CLUSTER_REPLICATION_H_
#define PAGODA_CLUSTER_REPLICATION_H_

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "absl/numeric/int128.h"
#include "absl/status/status.h"
#include "absl/types/span.h"
#include "pagoda/cluster/node_info.h"
#include "pagoda/cluster/router.h"

namespace pagoda::cluster {

// Writes keys[k] for every k in `keys_idx` to `node`; returns one status per index, in order.
// Unavailable / DeadlineExceeded mean "the node could not be reached" (the router then routes
// around it); any other error is the node's answer about that key.
using NodeWriteFn = std::function<std::vector<absl::Status>(const NodeInfo& node,
                                                            absl::Span<const size_t> keys_idx)>;

enum class ReadOutcome { kHit, kMiss, kUnreachable };
// Reads keys[k] for every k in `keys_idx` from `node` (into the caller's buffers); one outcome
// per index. A kHit must only be returned for verified bytes (checksum and layout checked).
using NodeReadFn = std::function<std::vector<ReadOutcome>(const NodeInfo& node,
                                                          absl::Span<const size_t> keys_idx)>;

// Writes every key to all of its R replicas. Per key: OK only when R copies were committed;
// otherwise Unavailable (fewer than R nodes, or some replica unreachable) or the first replica's
// own error, naming the nodes. A key with fewer than R live nodes is not written at all.
std::vector<absl::Status> ReplicatedWrite(Router& router, absl::Span<const absl::uint128> keys,
                                          const NodeWriteFn& write);

// Reads every key from its replicas in rank order: round i asks the i-th replica of each key not
// yet found. Returns, per key, the rank of the replica that served it, or -1 for a miss (no
// replica had it, or none was reachable). A miss is never an error: the store is a cache.
std::vector<int> ReadWithFallback(Router& router, absl::Span<const absl::uint128> keys,
                                  const NodeReadFn& read);

// True for the status codes that mean "node unreachable" rather than an answer.
bool IsUnreachable(const absl::Status& status);

}  // namespace pagoda::cluster

#endif  // PAGODA_CLUSTER_REPLICATION_H_
