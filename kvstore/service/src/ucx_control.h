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
// Tenants: each tenant's host pages are registered on their own (a mapping of the tenant's memfd,
// see Store::TenantArenaFd) and UcxHello hands a tenant only its own key, so a client's reads and
// writes through its key reach its own tenant's pages and nothing else.
//
// Trust: on RDMA transports the NIC enforces a key's bounds. UCX's software RMA (tcp, shared
// memory: every transport of a machine without RDMA NICs) does not: its target copies to or from
// whatever address a peer names, so any process that can reach the UCX port can read and write
// pagodad's memory with a forged key. The path is therefore off by default (server.ucx); turn it
// on only where every host and process that can reach it is trusted, or over RDMA with UCX_TLS
// restricted to hardware RMA transports.
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
  // UCX network devices the path serves on (UCX_NET_DEVICES, e.g. "lo", "eth0", "all").
  std::string net_devices = "lo";
};

class UcxControl {
 public:
  // Creates a UCX transport (tenants' pages are registered at their first UcxHello). Errors (no
  // usable UCX) are returned; pagodad then runs without the UCX path.
  static absl::StatusOr<std::unique_ptr<UcxControl>> Create(Store* store, ServiceMetrics* metrics,
                                                            UcxControlOptions options);
  ~UcxControl();  // aborts open reservations and releases open leases

  // The handlers; the tenant in each request is already authorized. Batch-level errors are
  // returned; per-page results go into the response.
  // The worker address and `tenant`'s own key (registering its pages on first use).
  absl::Status Hello(const std::string& tenant, v1::UcxHelloResponse* response);
  // Forgets expired leases and aborts expired reservations now (pagodad calls it periodically,
  // so a reservation expires even when no further UCX call comes).
  void SweepNow();
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
  // One tenant's pages as UCX sees them: a shared mapping of its memfd, registered.
  struct TenantView {
    uint8_t* base = nullptr;
    uint64_t size = 0;
    std::unique_ptr<RegisteredMemory> registration;
    std::string key;  // framed key of `registration`
    ~TenantView();
  };
  UcxControl(Store* store, ServiceMetrics* metrics, UcxControlOptions options);
  // Forgets expired leases and aborts expired reservations (at most every 100 ms unless `now`).
  void Sweep(bool now = false) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Store* const store_;
  ServiceMetrics* const metrics_;
  const UcxControlOptions options_;
  HostArena arena_;
  std::unique_ptr<Transport> transport_;
  std::string address_;  // framed worker address

  mutable absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, Lease> leases_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, Slot> slots_ ABSL_GUARDED_BY(mu_);
  absl::Time next_sweep_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  // Declared after transport_: destroyed (deregistered) before it.
  absl::flat_hash_map<std::string, std::unique_ptr<TenantView>> views_ ABSL_GUARDED_BY(mu_);
};

}  // namespace pagoda::service
