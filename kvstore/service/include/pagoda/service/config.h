// pagodad's configuration: a YAML document with an embedded single-node default, so pagodad runs
// with no file at all; a file given with --config overrides the default field by field, and
// command-line flags override both (see pagodad --help).
//
// Thread safety: plain values; copy freely.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace pagoda::service {

struct TenantConfig {
  std::string token;             // bearer token of this tenant; "" = the global token (if any)
  uint64_t quota_bytes = 0;      // host-tier bytes this tenant may hold; 0 = unlimited
  uint64_t ssd_quota_bytes = 0;  // SSD-tier bytes; 0 = unlimited
  uint64_t pin_quota_bytes = 0;  // pinned bytes; 0 = the engine default
};

// One page layout the store accepts (see pagoda::PageLayout).
struct LayoutConfig {
  std::string dtype = "fp16";  // fp16 | bf16
  uint32_t kv_heads = 8;
  uint32_t head_dim = 128;
  uint32_t page_tokens = 16;
};

struct ServiceConfig {
  // --- network
  std::string grpc_host = "127.0.0.1";  // "0.0.0.0" to serve remote clients
  int grpc_port = 50051;                // 0 = any free port (printed at start)
  std::string http_host = "127.0.0.1";
  int http_port = 9464;                     // /metrics and /healthz; 0 = any free port; -1 = off
  std::string local_socket;                 // zero-copy path; "" = <data_dir>/pagodad.sock; "off"
  std::string local_socket_group;           // group of the socket file (mode 0660); "" = ours
  uint64_t max_message_bytes = 8ull << 20;  // gRPC message cap (64KiB..2GiB-1)
  uint32_t get_chunk_bytes = 1u << 20;      // default chunk of streamed Get replies
  int local_max_connections = 256;          // open zero-copy connections; more are refused
  int local_threads = 4;                    // threads serving zero-copy requests
  int local_handshake_ms = 5000;            // a local connection must say Hello within this
  int local_io_timeout_ms = 5000;  // a started frame must arrive / a reply be taken within this
  // A request stream (gRPC Put), UCX reservation or local connection that holds reservations
  // and makes no progress for this long is cancelled and its reservations aborted.
  int reservation_timeout_ms = 60000;
  int grpc_keepalive_ms = 20000;  // ping idle gRPC connections; a dead peer's calls are cancelled
  int grpc_max_threads = 256;     // threads serving gRPC calls; more calls wait or are refused
  // Serve remote page bytes over UCX one-sided reads/writes. Off by default: UCX's software RMA
  // (tcp, shared memory) lets any peer that reaches the UCX port read and write pagodad's memory
  // (see ucx_control.h); turn on only where every such peer is trusted. gRPC bytes always work.
  bool ucx = false;
  int ucx_lease_ms = 5000;  // UCX read leases: default and longest
  // UCX network devices ("lo", "eth0,eth1", "all"). "" = "lo" when grpc_host is a loopback
  // address; otherwise the config must name them.
  std::string ucx_net_devices;
  // TCP port of the stream data path (remote page bytes beside gRPC, on grpc_host): 0 = any
  // free port (clients learn it from Health), -1 = off (remote bytes over gRPC or UCX). Off
  // whenever gRPC uses TLS: the data connection is not encrypted.
  int data_port = 0;

  // --- store (passed to the engine)
  std::string data_dir = "./pagoda-data";
  uint64_t host_bytes = 1ull << 30;          // host tier (shared-memory arena) capacity
  uint64_t host_segment_bytes = 4ull << 20;  // a tenant's host pages come in segments of this size
  uint64_t ssd_bytes = 8ull << 30;           // SSD tier capacity; 0 = no SSD tier
  uint64_t gpu_bytes = 0;                    // GPU tier capacity; 0 = no GPU tier
  bool ssd_sync_writes = false;    // sync each SSD batch (slower demotions; see checkpoint_ms)
  bool ssd_direct_writes = false;  // O_DIRECT demotions (StoreOptions::ssd_direct_writes)
  // On graceful stop, move pages still in memory tiers to SSD so a restart serves them (costs
  // shutdown time proportional to the host tier's content). Needs an SSD tier.
  bool persist_on_shutdown = true;
  // Every this many milliseconds, pages only in memory get a copy on SSD and the SSD tier is
  // synced (StoreOptions::checkpoint_interval): what kill -9 or a power loss can lose is bounded
  // by it (see the README's durability contract). 0 = only at a graceful stop. Needs an SSD tier.
  int checkpoint_ms = 1000;
  // Layouts accepted in writes (default: fp16 and bf16, 8 KV heads, head_dim 128, 16/32/64
  // tokens per page). A write of another layout fails with InvalidArgument.
  std::vector<LayoutConfig> layouts;

  // --- security
  std::string token;          // global bearer token; "" = no token needed
  std::string tls_cert;       // PEM server certificate file; "" = plaintext
  std::string tls_key;        // PEM private key file
  std::string tls_client_ca;  // PEM CA file; set = mTLS (clients must present a cert)
  std::map<std::string, TenantConfig> tenants;  // known tenants; empty = any tenant name
  bool allow_unknown_tenants = true;            // false: only tenants listed above are served
  // Local (unix socket) peers allowed: uid listed, or primary/supplementary gid listed. Both empty:
  // any peer that may open the socket file.
  std::vector<uint32_t> local_allowed_uids;
  std::vector<uint32_t> local_allowed_gids;

  // --- cluster (issue 7): registration in etcd; empty etcd_endpoints = a standalone node
  std::vector<std::string> etcd_endpoints;  // "host:port", "http://..." or "https://..." (TLS)
  std::string etcd_ca;    // PEM CA of etcd's server certificate ("" = system roots); https only
  std::string etcd_cert;  // PEM client certificate for etcd's --client-cert-auth (with etcd_key)
  std::string etcd_key;   // PEM key of etcd_cert
  std::string node_id;    // "" = this machine's host name
  std::string advertise_address;  // address clients dial; "" = grpc_host, or the host name
  std::string cluster_prefix = "/pagoda/v1/nodes/";  // etcd key prefix of this cluster's nodes
  int lease_ttl_s = 5;  // a crashed node leaves the cluster this long after its last keep-alive

  // --- logging
  std::string log_level = "info";  // trace, debug, info, warn, error
  bool log_json = false;           // one JSON object per line instead of text
};

// The embedded default, as YAML text (what `pagodad --print-default-config` prints).
const char* DefaultConfigYaml();

// Parses `yaml` over `base`: fields present in the text replace those of `base`. Unknown keys,
// wrong types and out-of-range values are InvalidArgument errors naming the key.
absl::StatusOr<ServiceConfig> ParseConfig(const std::string& yaml, const ServiceConfig& base);

// The embedded default parsed, then `path` (if not empty) parsed over it.
absl::StatusOr<ServiceConfig> LoadConfig(const std::string& path);

// Checks cross-field rules (TLS key with cert, ports in range, ...).
absl::Status ValidateConfig(const ServiceConfig& config);

// The unix socket path in effect ("" when the local path is off).
std::string LocalSocketPath(const ServiceConfig& config);

// The UCX network devices in effect (ucx_net_devices, or "lo" for a loopback grpc_host).
std::string UcxNetDevices(const ServiceConfig& config);

// Whether `host` is a loopback address or name (127.0.0.0/8, ::1, localhost).
bool IsLoopbackHost(const std::string& host);

}  // namespace pagoda::service
