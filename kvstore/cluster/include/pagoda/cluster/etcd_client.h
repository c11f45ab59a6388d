// A small etcd v3 client over etcd's gRPC API: KV (Range, Put, DeleteRange, Txn), leases
// (Grant, KeepAlive, Revoke) and Watch. It is what Pagoda's membership is built on; gRPC and the
// generated etcd types stay inside etcd_client.cc.
#ifndef PAGODA_CLUSTER_ETCD_CLIENT_H_
#define PAGODA_CLUSTER_ETCD_CLIENT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace pagoda::cluster {

struct EtcdOptions {
  // etcd client endpoints: "host:port" or "http://host:port" (plaintext), "https://host:port"
  // (TLS). A failed call moves to the next one.
  std::vector<std::string> endpoints;
  // TLS to https:// endpoints, PEM files read once by Create (paths as Kubernetes Secret mounts
  // give them). `tls_ca_file`: the CA that signed etcd's server certificate ("" = the system
  // roots). `tls_cert_file` + `tls_key_file`: this client's certificate for etcd's
  // --client-cert-auth (both or neither). Setting any of them with no https:// endpoint is an
  // error: TLS material must never be silently ignored in favour of plaintext.
  std::string tls_ca_file;
  std::string tls_cert_file;
  std::string tls_key_file;
  // Deadline of each unary call. Short, so a dead etcd is noticed quickly by keep-alive loops.
  absl::Duration rpc_timeout = absl::Seconds(2);
  // Upper bound of gRPC's reconnect backoff. gRPC's default (120 s) would hide an etcd that came
  // back; 1 s lets nodes re-register within about a second of etcd's return.
  absl::Duration max_reconnect_backoff = absl::Seconds(1);
};

// One key as etcd stores it (mvccpb.KeyValue).
struct EtcdKeyValue {
  std::string key;
  std::string value;
  int64_t create_revision = 0;
  int64_t mod_revision = 0;
  int64_t version = 0;
  int64_t lease = 0;  // 0 when the key has no lease
};

struct EtcdRangeResult {
  std::vector<EtcdKeyValue> kvs;
  int64_t revision = 0;  // the store revision the range was read at
};

struct EtcdLease {
  int64_t id = 0;
  int64_t ttl_seconds = 0;  // as granted by etcd
};

struct EtcdEvent {
  enum class Type { kPut, kDelete };
  Type type = Type::kPut;
  EtcdKeyValue kv;  // for kDelete only key and mod_revision are meaningful
};

// A running watch on one key range. Next() blocks for the next batch of events.
// Thread safety: Next() must be called from one thread at a time; Cancel() may be called from any
// thread, also while Next() blocks, and makes it return Cancelled.
class EtcdWatch {
 public:
  virtual ~EtcdWatch() = default;
  // The next non-empty batch of events, in revision order. Errors: Cancelled after Cancel();
  // OutOfRange when the start revision was compacted (re-list, then watch again); Unavailable
  // when the stream broke (etcd down or restarted). After an error the watch is finished.
  virtual absl::StatusOr<std::vector<EtcdEvent>> Next() = 0;
  virtual void Cancel() = 0;
};

// Thread safety: safe for concurrent use without external synchronization.
class EtcdClient {
 public:
  // Fails with InvalidArgument when no endpoint is given or one is malformed, or the TLS options
  // are inconsistent (see EtcdOptions), NotFound when a TLS file cannot be read. Does not contact
  // etcd (calls report Unavailable while it is down or its TLS handshake fails).
  static absl::StatusOr<std::unique_ptr<EtcdClient>> Create(const EtcdOptions& options);
  virtual ~EtcdClient() = default;

  // Puts key=value (attached to `lease`, 0 for none); returns the new store revision.
  virtual absl::StatusOr<int64_t> Put(std::string_view key, std::string_view value,
                                      int64_t lease = 0) = 0;
  // Creates key=value only if the key does not exist (a Txn on create_revision == 0). Returns
  // true when created, false when the key already existed (nothing changed).
  virtual absl::StatusOr<bool> PutIfAbsent(std::string_view key, std::string_view value,
                                           int64_t lease = 0) = 0;
  // The key (0 or 1 entries) at the current revision.
  virtual absl::StatusOr<EtcdRangeResult> Get(std::string_view key) = 0;
  // Every key starting with `prefix` (must be non-empty), sorted by key.
  virtual absl::StatusOr<EtcdRangeResult> GetPrefix(std::string_view prefix) = 0;
  // Deletes the key; returns how many keys were deleted (0 or 1).
  virtual absl::StatusOr<int64_t> Delete(std::string_view key) = 0;
  // Deletes every key under `prefix` (must be non-empty); returns how many were deleted.
  virtual absl::StatusOr<int64_t> DeletePrefix(std::string_view prefix) = 0;

  // Grants a lease of `ttl_seconds` (>= 1).
  virtual absl::StatusOr<EtcdLease> GrantLease(int64_t ttl_seconds) = 0;
  // Refreshes the lease once; returns its TTL again. NotFound when the lease no longer exists
  // (expired, revoked, or etcd lost it).
  virtual absl::StatusOr<int64_t> KeepAliveOnce(int64_t lease_id) = 0;
  // Revokes the lease, deleting every key attached to it. NotFound if it does not exist.
  virtual absl::Status RevokeLease(int64_t lease_id) = 0;

  // Watches every key under `prefix` (non-empty) from `start_revision` (0 = from now: the store's
  // current revision is read first — one count-only range, under the per-call deadline — so every
  // change after this returns is delivered). Fails with Unavailable when that read or the request
  // cannot be done; a watch etcd refuses (e.g. a compacted start revision) reports that from
  // Next().
  virtual absl::StatusOr<std::unique_ptr<EtcdWatch>> WatchPrefix(std::string_view prefix,
                                                                 int64_t start_revision) = 0;
};

// The smallest key greater than every key starting with `prefix` (etcd's range_end for a prefix).
std::string PrefixRangeEnd(std::string_view prefix);

}  // namespace pagoda::cluster

#endif  // PAGODA_CLUSTER_ETCD_CLIENT_H_
