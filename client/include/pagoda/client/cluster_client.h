// A Pagoda client for a cluster of pagodad nodes (issue 7). It watches the node set in etcd,
// places every page by rendezvous hashing of its key over the live nodes, writes each page to R
// nodes and acknowledges a Put only once all R copies are committed, and reads from the replicas
// in rank order. Nodes that fail requests are routed around for a short while; a lost page is a
// miss (NotFound), never wrong bytes (every byte read is checksum-verified by the per-node
// client).
//
//   pagoda::ClusterClientOptions o;
//   o.etcd_endpoints = {"etcd-0:2379"};
//   o.replication = 2;
//   auto client = pagoda::ClusterClient::Connect(o);  // then use it as any pagoda::Client
//
// Thread safety: safe for concurrent use without external synchronization (as pagoda::Client).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "pagoda/client/client.h"
#include "pagoda/client/options.h"

namespace pagoda {

struct ClusterClientOptions {
  // Options of each per-node connection (tenant, token, TLS, timeouts, ...); `target` is
  // ignored, each node's address comes from etcd. `data_path` applies to the local node only
  // (see local_node_id); every other node is reached remotely: the stream data path where the
  // node offers it (ClientOptions::remote_stream), else page bytes over gRPC.
  ClientOptions node;
  // Id of the pagodad on this machine, whose zero-copy shared-memory path may be used (e.g. the
  // Kubernetes node name). "" = every node over gRPC. Only the local node may use it: in a
  // DaemonSet every node's socket has the same path, so a socket found on this machine always
  // belongs to the local node, never to the remote one being dialed.
  std::string local_node_id;
  // etcd client endpoints ("host:port", or "https://host:port" for TLS); required.
  std::vector<std::string> etcd_endpoints;
  // TLS to https:// etcd endpoints (PEM files): etcd's CA ("" = system roots), and this client's
  // certificate + key when etcd requires client certificates. See cluster::EtcdOptions.
  std::string etcd_ca_file;
  std::string etcd_cert_file;
  std::string etcd_key_file;
  // etcd key prefix of the cluster's nodes (pagodad's cluster.prefix).
  std::string prefix = "/pagoda/v1/nodes/";
  // Copies of each page (R >= 1). Puts fail with Unavailable while fewer than R nodes are up.
  int replication = 1;
  // How long a node that failed a request is routed around.
  absl::Duration suspect_for = absl::Seconds(2);
  // Deadline of each per-node call (overrides node.timeout): the most a dead or partitioned
  // node can cost one request before the client moves on.
  absl::Duration node_timeout = absl::Seconds(2);
};

// Counters of how reads were served, for tests and monitoring.
struct ClusterReadStats {
  uint64_t primary_hits = 0;  // served by the key's first replica
  uint64_t replica_hits = 0;  // served by a later replica (fallback)
  uint64_t misses = 0;        // no replica had the page (or none was reachable)
  uint64_t unreachable = 0;   // per-node calls that could not reach their node
};

class ClusterClient : public Client {
 public:
  // Lists the nodes in etcd and starts watching them. InvalidArgument for bad options;
  // Unavailable when etcd cannot be reached. Nodes are connected to lazily.
  static absl::StatusOr<std::unique_ptr<ClusterClient>> Connect(
      const ClusterClientOptions& options);

  // Ids of the live nodes this client currently routes over.
  virtual std::vector<std::string> LiveNodes() const = 0;
  // Ids of the replicas of `key`, best first, as a Put would use them now.
  virtual std::vector<std::string> ReplicasOf(const PageKey& key) const = 0;
  virtual ClusterReadStats read_stats() const = 0;
};

}  // namespace pagoda
