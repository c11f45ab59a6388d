// The UCX data path of pagodad (issue 6): the host arena registered with a UCX transport, and the
// server side of the UcxHello / UcxAcquire / UcxRelease / UcxReserve / UcxCommit control calls
// (see pagoda.proto). Page bytes never cross gRPC here: remote clients read leased slots and
// write reserved slots of the arena with one-sided UCX operations.
//
// Every lease and reservation is bound to the tenant that made it: another tenant can neither
// release, commit nor abort it. Leases end at the store's expiry even when never released;
// reservations not committed within `reservation_ttl` are aborted (a client that died mid-write
// never leaves a slot held). Commit checksums the slot against the checksum given at reserve time
// and aborts the page on mismatch, so bytes a client failed to write are never published.
//
// Trust: like the local path's memfd, the arena key reaches the whole arena. A client holding it
// (any client whose token UcxHello accepted) can read or write any slot over UCX, other tenants'
// included; leases and reservations order honest clients, they do not fence hostile ones. Turn the
// path off (server.ucx: false / --ucx false) where remote clients are not trusted.
//
// Thread safety: all methods are safe for concurrent use.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "metrics.h"
#include "pagoda.pb.h"
#include "pagoda/kvstore/store.h"

namespace pagoda {
class Transport;
class RegisteredMemory;
}  // namespace pagoda

namespace pagoda::service {

struct UcxControlOptions {
  uint64_t instance_id = 0;
  // Lease duration when a request asks for none, and the longest one granted (the store caps it
  // at its own maximum too).
  absl::Duration default_lease = absl::Seconds(5);
  // A reservation not committed or aborted within this long is aborted.
  absl::Duration reservation_ttl = absl::Seconds(60);
  // Open leases + reservations across all clients; more are refused with ResourceExhausted.
  size_t max_open = 1 << 20;
};

class UcxControl {
 public:
  // Creates a UCX transport and registers the store's host arena with it. Errors (no usable UCX)
  // are returned; pagodad then runs without the UCX path.
  static absl::StatusOr<std::unique_ptr<UcxControl>> Create(Store* store, ServiceMetrics* metrics,
                                                            UcxControlOptions options);
  ~UcxControl();  // aborts open reservations and releases open leases

  // The handlers; the tenant in each request is already authorized. Batch-level errors are
  // returned; per-page results go into the response.
  absl::Status Hello(v1::UcxHelloResponse* response) const;
  absl::Status Acquire(const v1::UcxAcquireRequest& request, v1::UcxAcquireResponse* response);
  absl::Status Release(const v1::UcxReleaseRequest& request, v1::BatchResponse* response);
  absl::Status Reserve(const v1::PutBegin& request, v1::UcxReserveResponse* response);
  absl::Status Commit(const v1::UcxCommitRequest& request, v1::PutResponse* response);

  size_t open_leases() const;
  size_t open_reservations() const;

 private:
  struct Lease {
    std::string tenant;
    absl::Time expiry;
  };
  struct Slot {
    std::string tenant;
    PageKey key;
    uint64_t offset = 0;
    uint64_t size = 0;
    uint64_t checksum = 0;
    absl::Time deadline;
  };
  UcxControl(Store* store, ServiceMetrics* metrics, UcxControlOptions options);
  // Forgets expired leases and aborts expired reservations.
  void Sweep() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Store* const store_;
  ServiceMetrics* const metrics_;
  const UcxControlOptions options_;
  HostArena arena_;
  std::unique_ptr<Transport> transport_;
  std::unique_ptr<RegisteredMemory> registration_;
  std::string address_;  // framed worker address
  std::string key_;      // framed arena key

  mutable absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, Lease> leases_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, Slot> slots_ ABSL_GUARDED_BY(mu_);
  absl::Time next_sweep_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

}  // namespace pagoda::service
