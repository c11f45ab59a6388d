// A pagodad node's registration in etcd: its NodeInfo as JSON at <prefix><id>, attached to a lease
// that a background thread keeps alive. A node that dies stops the keep-alives and drops out when
// the lease expires; a node that finds its lease or key gone (etcd restarted empty, a long
// partition) registers again on its own.
#ifndef PAGODA_CLUSTER_REGISTRATION_H_
#define PAGODA_CLUSTER_REGISTRATION_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "pagoda/cluster/etcd_client.h"
#include "pagoda/cluster/node_info.h"

namespace pagoda::cluster {

// The etcd key prefix all of one cluster's nodes live under.
inline constexpr char kDefaultNodesPrefix[] = "/pagoda/v1/nodes/";

struct RegistrationOptions {
  std::string prefix = kDefaultNodesPrefix;
  // Lease TTL. A dead node stays routable for up to this long (clients also route around nodes
  // that fail their requests); shorter means more keep-alive traffic.
  int64_t lease_ttl_seconds = 5;
  // Keep-alive period; must be well below the TTL (default TTL/3).
  absl::Duration keepalive_interval = absl::Seconds(5) / 3;
  // Wait between attempts while etcd is unreachable.
  absl::Duration retry_interval = absl::Milliseconds(250);
  // When false, Start() succeeds even if etcd is unreachable and the node registers as soon as
  // it answers (a node keeps serving local clients while etcd is down). When true, Start()
  // fails with Unavailable instead.
  bool require_first_registration = true;
};

// Thread safety: safe for concurrent use without external synchronization.
class NodeRegistration {
 public:
  // Validates `node`, registers it once synchronously (so the node is routable when this
  // returns), then keeps it registered from a background thread. `etcd` must outlive the
  // registration. Errors: InvalidArgument for a bad node or options; the first registration's
  // error when it fails and options.require_first_registration is set.
  static absl::StatusOr<std::unique_ptr<NodeRegistration>> Start(EtcdClient* etcd, NodeInfo node,
                                                                 RegistrationOptions options = {});
  // Same as Stop(/*deregister=*/true).
  ~NodeRegistration();

  // Stops the keep-alive thread; with `deregister`, revokes the lease so the node leaves at once
  // (a graceful shutdown); without, the node drops out when the lease expires (like a crash).
  void Stop(bool deregister = true);

  // True while the last keep-alive or registration succeeded.
  bool registered() const;
  // How many times the node (re-)registered, counting the first one.
  int64_t registrations() const;
  std::string key() const { return key_; }

 private:
  NodeRegistration(EtcdClient* etcd, NodeInfo node, RegistrationOptions options);
  // Register and Refresh run on the starting thread, then only on the keep-alive thread.
  absl::Status Register();
  absl::Status Refresh();
  void Loop();

  EtcdClient* const etcd_;
  const NodeInfo node_;
  const RegistrationOptions options_;
  const std::string key_;
  const std::string value_;

  int64_t lease_id_ = 0;  // owned by whichever thread runs Register/Refresh (see above)
  std::atomic<bool> registered_{false};
  std::atomic<int64_t> registrations_{0};
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace pagoda::cluster

#endif  // PAGODA_CLUSTER_REGISTRATION_H_
