// Routes a page key to its ordered replica list: the first R live nodes by rendezvous rank, with
// nodes that just failed a request ("suspects") routed around for a while. Suspicion is local to
// one client and short: it covers the window before etcd notices a dead node (lease TTL) and
// nodes that are alive in etcd but unreachable from this client (a partition).
#ifndef PAGODA_CLUSTER_ROUTER_H_
#define PAGODA_CLUSTER_ROUTER_H_

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/numeric/int128.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "pagoda/cluster/node_info.h"
#include "pagoda/cluster/placement.h"

namespace pagoda::cluster {

struct RouterOptions {
  // Copies of each page (R). A Put is acknowledged only once all R are committed; reads try the R
  // replicas in rank order.
  int replication = 1;
  // How long a node that failed a request is routed around before it is tried again. Longer
  // means fewer slow failing calls to a dead node, shorter means a recovered node is used sooner.
  absl::Duration suspect_for = absl::Seconds(2);
};

// Thread safety: safe for concurrent use without external synchronization.
class Router {
 public:
  // `source` returns the current live node set (e.g. Membership::placement); it is called on
  // every Route() and must be cheap and thread-safe.
  using PlacementSource = std::function<std::shared_ptr<const Placement>()>;
  // InvalidArgument when replication < 1 or suspect_for < 0.
  static absl::StatusOr<std::unique_ptr<Router>> Create(PlacementSource source,
                                                        RouterOptions options = {});

  // The replicas of `key`, best first: the first R nodes by rank that are not suspect. When fewer
  // than R healthy nodes exist, suspects fill the list in rank order (a suspect may have
  // recovered); the list is shorter than R only when the cluster has fewer than R nodes. Empty
  // when no node is known.
  std::vector<NodeInfo> Route(absl::uint128 key) const;

  // A request to `node_id` failed at the transport level (unreachable, timed out): route around
  // it for suspect_for. Application errors (NotFound, InvalidArgument) must not be reported.
  void ReportFailure(std::string_view node_id);
  // A request to `node_id` succeeded: it is no longer suspect.
  void ReportSuccess(std::string_view node_id);
  bool IsSuspect(std::string_view node_id) const;

  int replication() const { return options_.replication; }
  std::shared_ptr<const Placement> placement() const { return source_(); }

 private:
  Router(PlacementSource source, RouterOptions options)
      : source_(std::move(source)), options_(options) {}

  const PlacementSource source_;
  const RouterOptions options_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, absl::Time> suspect_until_ ABSL_GUARDED_BY(mu_);
};

}  // namespace pagoda::cluster

#endif  // PAGODA_CLUSTER_ROUTER_H_
