// The live node set of a cluster as clients see it: listed from etcd, then kept current by a
// watch on the nodes prefix. When etcd is unreachable the last known set stays in use (a cache
// keeps serving from nodes it already knows); the watch resumes with a fresh listing once etcd
// answers again.
#ifndef PAGODA_CLUSTER_MEMBERSHIP_H_
#define PAGODA_CLUSTER_MEMBERSHIP_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "pagoda/cluster/etcd_client.h"
#include "pagoda/cluster/placement.h"
#include "pagoda/cluster/registration.h"

namespace pagoda::cluster {

struct MembershipOptions {
  std::string prefix = kDefaultNodesPrefix;  // must match the nodes' RegistrationOptions::prefix
  // Wait between attempts to list and watch again after etcd failed.
  absl::Duration retry_interval = absl::Milliseconds(250);
};

// Thread safety: safe for concurrent use without external synchronization.
class Membership {
 public:
  // Lists the nodes once synchronously (Unavailable if etcd cannot be reached), then watches from
  // a background thread. `etcd` must outlive the Membership. Entries that are not valid NodeInfo
  // JSON are skipped with a warning.
  static absl::StatusOr<std::unique_ptr<Membership>> Start(EtcdClient* etcd,
                                                           MembershipOptions options = {});
  ~Membership();  // stops the watch thread

  // The current live node set; an immutable snapshot, cheap to take on every request.
  std::shared_ptr<const Placement> placement() const;
  // Increases every time the node set changes.
  uint64_t generation() const;
  // Blocks until `pred` holds for the current set or `timeout` passes; returns whether it held.
  bool WaitUntil(const std::function<bool(const Placement&)>& pred, absl::Duration timeout) const;

 private:
  Membership(EtcdClient* etcd, MembershipOptions options);
  // Lists the prefix and publishes it; returns the revision read at.
  absl::StatusOr<int64_t> Relist();
  void Loop(int64_t revision);

  EtcdClient* const etcd_;
  const MembershipOptions options_;

  mutable absl::Mutex mu_;
  std::shared_ptr<const Placement> placement_ ABSL_GUARDED_BY(mu_);
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  EtcdWatch* watch_ ABSL_GUARDED_BY(mu_) = nullptr;  // the watch Loop blocks on, to cancel it
  std::thread thread_;
};

}  // namespace pagoda::cluster

#endif  // PAGODA_CLUSTER_MEMBERSHIP_H_
