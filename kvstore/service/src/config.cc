#include "pagoda/service/config.h"

#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace pagoda::service {
namespace {

// gRPC keeps message sizes in an int.
constexpr uint64_t kMinMessageBytes = 64u << 10;
constexpr uint64_t kMaxMessageBytes = std::numeric_limits<int32_t>::max();

constexpr char kDefaultYaml[] = R"(# pagodad embedded default: one node, host + SSD tiers, no auth.
server:
  grpc_host: 127.0.0.1      # loopback only; a cluster node names its address
  grpc_port: 50051
  http_host: 127.0.0.1
  http_port: 9464
  local_socket: ""          # "" = <data_dir>/pagodad.sock, "off" = no zero-copy path
  local_socket_group: ""    # group that may connect (socket mode 0660); "" = pagodad's group
  max_message_bytes: 8MiB
  get_chunk_bytes: 1MiB
  local_max_connections: 256
  local_threads: 4          # threads serving zero-copy requests (idle connections hold none)
  local_handshake_ms: 5000  # a local connection says Hello within this or is closed
  local_io_timeout_ms: 5000 # a started request frame / a reply must move within this
  reservation_timeout_ms: 60000 # idle streams / connections holding reservations are aborted
  grpc_keepalive_ms: 20000  # keepalive pings: calls of a dead peer are cancelled
  grpc_max_threads: 256
  data_port: 0              # remote page bytes on TCP beside gRPC: 0 = a free port, -1 = off
  ucx: false                # UCX one-sided bytes: trusts every peer that reaches it (README)
  ucx_lease_ms: 5000        # UCX read leases: default and longest duration
  ucx_net_devices: ""       # "" = lo (loopback grpc_host); else name them: eth0, all, ...
store:
  data_dir: ./pagoda-data
  host_bytes: 1GiB
  host_segment_bytes: 4MiB  # a tenant's host pages come in segments of this size
  ssd_bytes: 8GiB
  gpu_bytes: 0
  ssd_sync_writes: false
  ssd_direct_writes: false  # O_DIRECT demotions: no page-cache copy of SSD pages
  persist_on_shutdown: true # acknowledged pages survive SIGTERM + restart (needs SSD)
  checkpoint_ms: 1000       # pages older than this (+ one checkpoint) survive kill -9; 0 = off
  layouts:                  # page shapes accepted in writes
    - {dtype: fp16, kv_heads: 8, head_dim: 128, page_tokens: 16}
    - {dtype: bf16, kv_heads: 8, head_dim: 128, page_tokens: 16}
    - {dtype: fp16, kv_heads: 8, head_dim: 128, page_tokens: 32}
    - {dtype: bf16, kv_heads: 8, head_dim: 128, page_tokens: 32}
    - {dtype: fp16, kv_heads: 8, head_dim: 128, page_tokens: 64}
    - {dtype: bf16, kv_heads: 8, head_dim: 128, page_tokens: 64}
security:
  token: ""
  tls_cert: ""
  tls_key: ""
  tls_client_ca: ""
  allow_unknown_tenants: true
  local_allowed_uids: []    # local peers allowed by uid / gid (SO_PEERCRED); empty = any
  local_allowed_gids: []
tenants: {}
cluster:                    # registration in etcd (issue 7); no endpoints = standalone node
  etcd_endpoints: ""        # comma-separated host:port list of etcd's client API (https:// = TLS)
  etcd_ca: ""               # TLS to etcd: CA of its server certificate ("" = system roots)
  etcd_cert: ""             # TLS to etcd: client certificate and key (etcd --client-cert-auth)
  etcd_key: ""
  node_id: ""               # "" = the host name
  advertise_address: ""     # address clients dial; "" = grpc_host (host name if 0.0.0.0)
  prefix: /pagoda/v1/nodes/
  lease_ttl_s: 5
logging:
  level: info
  json: false
)";

// Parses "123", "64KiB", "8MiB", "1GiB", "2TiB" (also KB/MB/GB as powers of 1000).
absl::StatusOr<uint64_t> ParseBytes(const std::string& key, const std::string& text) {
  std::string t = std::string(absl::StripAsciiWhitespace(text));
  size_t digits = 0;
  while (digits < t.size() && absl::ascii_isdigit(static_cast<unsigned char>(t[digits]))) ++digits;
  uint64_t value = 0;
  if (digits == 0 || !absl::SimpleAtoi(t.substr(0, digits), &value)) {
    return absl::InvalidArgumentError(absl::StrCat("config ", key, ": not a size: '", text, "'"));
  }
  std::string unit = absl::AsciiStrToLower(absl::StripAsciiWhitespace(t.substr(digits)));
  uint64_t mult = 1;
  if (unit.empty() || unit == "b") {
    mult = 1;
  } else if (unit == "kib" || unit == "k") {
    mult = 1ull << 10;
  } else if (unit == "mib" || unit == "m") {
    mult = 1ull << 20;
  } else if (unit == "gib" || unit == "g") {
    mult = 1ull << 30;
  } else if (unit == "tib" || unit == "t") {
    mult = 1ull << 40;
  } else if (unit == "kb") {
    mult = 1000;
  } else if (unit == "mb") {
    mult = 1000 * 1000;
  } else if (unit == "gb") {
    mult = 1000ull * 1000 * 1000;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("config ", key, ": unknown size unit '", unit, "' in '", text, "'"));
  }
  if (value > std::numeric_limits<uint64_t>::max() / mult) {
    return absl::InvalidArgumentError(absl::StrCat("config ", key, ": size overflows: ", text));
  }
  return value * mult;
}

class Reader {
 public:
  explicit Reader(const YAML::Node& node, std::string path) : node_(node), path_(std::move(path)) {}

  // Fails on keys of this mapping that were never asked for (typos must not pass silently).
  absl::Status CheckNoUnknown() const {
    if (!node_ || node_.IsNull()) return absl::OkStatus();
    if (!node_.IsMap()) return absl::InvalidArgumentError("config " + path_ + ": not a mapping");
    for (const auto& kv : node_) {
      std::string k = kv.first.as<std::string>();
      if (!known_.count(k)) {
        return absl::InvalidArgumentError(absl::StrCat("config: unknown key '", Join(k), "'"));
      }
    }
    return absl::OkStatus();
  }

  absl::Status String(const std::string& key, std::string* out) {
    YAML::Node n = Get(key);
    if (!n) return absl::OkStatus();
    if (!n.IsScalar() && !n.IsNull()) return Wrong(key, "a string");
    *out = n.IsNull() ? "" : n.as<std::string>();
    return absl::OkStatus();
  }
  absl::Status Bool(const std::string& key, bool* out) {
    YAML::Node n = Get(key);
    if (!n) return absl::OkStatus();
    try {
      *out = n.as<bool>();
    } catch (const YAML::Exception&) {
      return Wrong(key, "true or false");
    }
    return absl::OkStatus();
  }
  absl::Status Int(const std::string& key, int min, int max, int* out) {
    YAML::Node n = Get(key);
    if (!n) return absl::OkStatus();
    int64_t v = 0;
    if (!n.IsScalar() || !absl::SimpleAtoi(n.Scalar(), &v)) return Wrong(key, "an integer");
    if (v < min || v > max) {
      return absl::InvalidArgumentError(
          absl::StrCat("config ", Join(key), ": ", v, " is outside [", min, ", ", max, "]"));
    }
    *out = static_cast<int>(v);
    return absl::OkStatus();
  }
  absl::Status Bytes(const std::string& key, uint64_t* out) {
    YAML::Node n = Get(key);
    if (!n) return absl::OkStatus();
    if (!n.IsScalar()) return Wrong(key, "a size");
    absl::StatusOr<uint64_t> v = ParseBytes(Join(key), n.Scalar());
    if (!v.ok()) return v.status();
    *out = *v;
    return absl::OkStatus();
  }
  absl::Status BytesIn(const std::string& key, uint64_t min, uint64_t max, uint64_t* out) {
    uint64_t v = *out;
    if (absl::Status s = Bytes(key, &v); !s.ok()) return s;
    if (v < min || v > max) {
      return absl::InvalidArgumentError(
          absl::StrCat("config ", Join(key), ": ", v, " bytes is outside [", min, ", ", max, "]"));
    }
    *out = v;
    return absl::OkStatus();
  }
  // A list of ids: a YAML sequence of integers or a comma-separated string.
  absl::Status Ids(const std::string& key, std::vector<uint32_t>* out) {
    YAML::Node n = Get(key);
    if (!n || n.IsNull()) return absl::OkStatus();
    std::vector<std::string> items;
    if (n.IsSequence()) {
      for (const auto& e : n) {
        if (!e.IsScalar()) return Wrong(key, "a list of integer ids");
        items.push_back(e.Scalar());
      }
    } else if (n.IsScalar()) {
      for (absl::string_view v : absl::StrSplit(n.Scalar(), ',', absl::SkipWhitespace())) {
        items.emplace_back(absl::StripAsciiWhitespace(v));
      }
    } else {
      return Wrong(key, "a list of integer ids");
    }
    out->clear();
    for (const std::string& item : items) {
      uint32_t id = 0;
      if (!absl::SimpleAtoi(item, &id)) {
        return absl::InvalidArgumentError(
            absl::StrCat("config ", Join(key), ": '", item, "' is not an id (0..4294967295)"));
      }
      out->push_back(id);
    }
    return absl::OkStatus();
  }
  YAML::Node Get(const std::string& key) {
    known_.insert(key);
    if (!node_ || !node_.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
    YAML::Node n = node_[key];
    if (!n.IsDefined()) return YAML::Node(YAML::NodeType::Undefined);
    return n;
  }
  std::string Join(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }

 private:
  absl::Status Wrong(const std::string& key, const char* want) const {
    return absl::InvalidArgumentError(absl::StrCat("config ", Join(key), ": expected ", want));
  }
  YAML::Node node_;
  std::string path_;
  std::set<std::string> known_;
};

#define PAGODA_RETURN_IF_ERROR(expr) \
  do {                               \
    absl::Status _s = (expr);        \
    if (!_s.ok()) return _s;         \
  } while (0)

absl::Status ParseInto(const YAML::Node& root, ServiceConfig* c) {
  if (!root || root.IsNull()) return absl::OkStatus();
  if (!root.IsMap()) return absl::InvalidArgumentError("config: the document must be a mapping");
  Reader top(root, "");
  {
    Reader r(top.Get("server"), "server");
    PAGODA_RETURN_IF_ERROR(r.String("grpc_host", &c->grpc_host));
    PAGODA_RETURN_IF_ERROR(r.Int("grpc_port", 0, 65535, &c->grpc_port));
    PAGODA_RETURN_IF_ERROR(r.String("http_host", &c->http_host));
    PAGODA_RETURN_IF_ERROR(r.Int("http_port", -1, 65535, &c->http_port));
    PAGODA_RETURN_IF_ERROR(r.String("local_socket", &c->local_socket));
    PAGODA_RETURN_IF_ERROR(r.String("local_socket_group", &c->local_socket_group));
    PAGODA_RETURN_IF_ERROR(
        r.BytesIn("max_message_bytes", kMinMessageBytes, kMaxMessageBytes, &c->max_message_bytes));
    uint64_t chunk = c->get_chunk_bytes;
    PAGODA_RETURN_IF_ERROR(r.BytesIn("get_chunk_bytes", 1, 64u << 20, &chunk));
    c->get_chunk_bytes = static_cast<uint32_t>(chunk);
    PAGODA_RETURN_IF_ERROR(r.Int("local_max_connections", 1, 65536, &c->local_max_connections));
    PAGODA_RETURN_IF_ERROR(r.Int("local_threads", 1, 256, &c->local_threads));
    PAGODA_RETURN_IF_ERROR(r.Int("local_handshake_ms", 10, 600000, &c->local_handshake_ms));
    PAGODA_RETURN_IF_ERROR(r.Int("local_io_timeout_ms", 10, 600000, &c->local_io_timeout_ms));
    PAGODA_RETURN_IF_ERROR(
        r.Int("reservation_timeout_ms", 100, 3600000, &c->reservation_timeout_ms));
    PAGODA_RETURN_IF_ERROR(r.Int("grpc_keepalive_ms", 1000, 3600000, &c->grpc_keepalive_ms));
    PAGODA_RETURN_IF_ERROR(r.Int("grpc_max_threads", 4, 65536, &c->grpc_max_threads));
    PAGODA_RETURN_IF_ERROR(r.Int("data_port", -1, 65535, &c->data_port));
    PAGODA_RETURN_IF_ERROR(r.Bool("ucx", &c->ucx));
    PAGODA_RETURN_IF_ERROR(r.Int("ucx_lease_ms", 1, 600000, &c->ucx_lease_ms));
    PAGODA_RETURN_IF_ERROR(r.String("ucx_net_devices", &c->ucx_net_devices));
    PAGODA_RETURN_IF_ERROR(r.CheckNoUnknown());
  }
  {
    Reader r(top.Get("store"), "store");
    PAGODA_RETURN_IF_ERROR(r.String("data_dir", &c->data_dir));
    PAGODA_RETURN_IF_ERROR(r.BytesIn("host_bytes", 1u << 20, 1ull << 46, &c->host_bytes));
    PAGODA_RETURN_IF_ERROR(
        r.BytesIn("host_segment_bytes", 64u << 10, 1ull << 30, &c->host_segment_bytes));
    if (c->host_segment_bytes % 4096 != 0) {
      return absl::InvalidArgumentError(
          "config store.host_segment_bytes: must be a multiple of 4KiB (segments are mapped)");
    }
    // host_slot_bytes never had an effect; a config naming it gets a clear error unless it is 0.
    uint64_t slot = 0;
    PAGODA_RETURN_IF_ERROR(r.Bytes("host_slot_bytes", &slot));
    if (slot != 0) {
      return absl::InvalidArgumentError(
          "config store.host_slot_bytes: has no effect (slot sizes follow store.layouts); remove "
          "it, or set store.host_segment_bytes");
    }
    PAGODA_RETURN_IF_ERROR(r.Bytes("ssd_bytes", &c->ssd_bytes));
    if (c->ssd_bytes != 0 && c->ssd_bytes < (1u << 20)) {
      return absl::InvalidArgumentError("config store.ssd_bytes: 0 (no SSD tier) or at least 1MiB");
    }
    PAGODA_RETURN_IF_ERROR(r.Bytes("gpu_bytes", &c->gpu_bytes));
    PAGODA_RETURN_IF_ERROR(r.Bool("ssd_sync_writes", &c->ssd_sync_writes));
    PAGODA_RETURN_IF_ERROR(r.Bool("ssd_direct_writes", &c->ssd_direct_writes));
    PAGODA_RETURN_IF_ERROR(r.Bool("persist_on_shutdown", &c->persist_on_shutdown));
    PAGODA_RETURN_IF_ERROR(r.Int("checkpoint_ms", 0, 3600000, &c->checkpoint_ms));
    YAML::Node layouts = r.Get("layouts");
    if (layouts) {
      if (!layouts.IsSequence() || layouts.size() == 0) {
        return absl::InvalidArgumentError("config store.layouts: expected a non-empty list");
      }
      c->layouts.clear();
      for (size_t i = 0; i < layouts.size(); ++i) {
        LayoutConfig l;
        Reader lr(layouts[i], absl::StrCat("store.layouts[", i, "]"));
        PAGODA_RETURN_IF_ERROR(lr.String("dtype", &l.dtype));
        int v = static_cast<int>(l.kv_heads);
        PAGODA_RETURN_IF_ERROR(lr.Int("kv_heads", 1, 256, &v));
        l.kv_heads = static_cast<uint32_t>(v);
        v = static_cast<int>(l.head_dim);
        PAGODA_RETURN_IF_ERROR(lr.Int("head_dim", 8, 4096, &v));
        l.head_dim = static_cast<uint32_t>(v);
        v = static_cast<int>(l.page_tokens);
        PAGODA_RETURN_IF_ERROR(lr.Int("page_tokens", 1, 32768, &v));
        l.page_tokens = static_cast<uint32_t>(v);
        if (l.dtype != "fp16" && l.dtype != "bf16") {
          return absl::InvalidArgumentError(
              absl::StrCat("config store.layouts[", i, "].dtype: fp16 or bf16, got ", l.dtype));
        }
        PAGODA_RETURN_IF_ERROR(lr.CheckNoUnknown());
        c->layouts.push_back(l);
      }
    }
    PAGODA_RETURN_IF_ERROR(r.CheckNoUnknown());
  }
  {
    Reader r(top.Get("security"), "security");
    PAGODA_RETURN_IF_ERROR(r.String("token", &c->token));
    PAGODA_RETURN_IF_ERROR(r.String("tls_cert", &c->tls_cert));
    PAGODA_RETURN_IF_ERROR(r.String("tls_key", &c->tls_key));
    PAGODA_RETURN_IF_ERROR(r.String("tls_client_ca", &c->tls_client_ca));
    PAGODA_RETURN_IF_ERROR(r.Bool("allow_unknown_tenants", &c->allow_unknown_tenants));
    PAGODA_RETURN_IF_ERROR(r.Ids("local_allowed_uids", &c->local_allowed_uids));
    PAGODA_RETURN_IF_ERROR(r.Ids("local_allowed_gids", &c->local_allowed_gids));
    PAGODA_RETURN_IF_ERROR(r.CheckNoUnknown());
  }
  {
    YAML::Node tenants = top.Get("tenants");
    if (tenants && !tenants.IsNull()) {
      if (!tenants.IsMap()) return absl::InvalidArgumentError("config tenants: expected a mapping");
      for (const auto& kv : tenants) {
        std::string name = kv.first.as<std::string>();
        if (name.empty() || name.size() > 128) {
          return absl::InvalidArgumentError("config tenants: names must be 1..128 bytes");
        }
        TenantConfig t = c->tenants[name];
        Reader r(kv.second, "tenants." + name);
        PAGODA_RETURN_IF_ERROR(r.String("token", &t.token));
        PAGODA_RETURN_IF_ERROR(r.Bytes("quota_bytes", &t.quota_bytes));
        PAGODA_RETURN_IF_ERROR(r.Bytes("ssd_quota_bytes", &t.ssd_quota_bytes));
        PAGODA_RETURN_IF_ERROR(r.Bytes("pin_quota_bytes", &t.pin_quota_bytes));
        PAGODA_RETURN_IF_ERROR(r.CheckNoUnknown());
        c->tenants[name] = t;
      }
    }
  }
  {
    Reader r(top.Get("cluster"), "cluster");
    std::string endpoints;
    for (size_t i = 0; i < c->etcd_endpoints.size(); ++i) {
      endpoints += (i ? "," : "") + c->etcd_endpoints[i];
    }
    PAGODA_RETURN_IF_ERROR(r.String("etcd_endpoints", &endpoints));
    c->etcd_endpoints.clear();
    for (absl::string_view e : absl::StrSplit(endpoints, ',', absl::SkipWhitespace())) {
      c->etcd_endpoints.emplace_back(absl::StripAsciiWhitespace(e));
    }
    PAGODA_RETURN_IF_ERROR(r.String("etcd_ca", &c->etcd_ca));
    PAGODA_RETURN_IF_ERROR(r.String("etcd_cert", &c->etcd_cert));
    PAGODA_RETURN_IF_ERROR(r.String("etcd_key", &c->etcd_key));
    PAGODA_RETURN_IF_ERROR(r.String("node_id", &c->node_id));
    PAGODA_RETURN_IF_ERROR(r.String("advertise_address", &c->advertise_address));
    PAGODA_RETURN_IF_ERROR(r.String("prefix", &c->cluster_prefix));
    PAGODA_RETURN_IF_ERROR(r.Int("lease_ttl_s", 2, 3600, &c->lease_ttl_s));
    PAGODA_RETURN_IF_ERROR(r.CheckNoUnknown());
  }
  {
    Reader r(top.Get("logging"), "logging");
    PAGODA_RETURN_IF_ERROR(r.String("level", &c->log_level));
    PAGODA_RETURN_IF_ERROR(r.Bool("json", &c->log_json));
    PAGODA_RETURN_IF_ERROR(r.CheckNoUnknown());
  }
  return top.CheckNoUnknown();
}

}  // namespace

const char* DefaultConfigYaml() { return kDefaultYaml; }

absl::StatusOr<ServiceConfig> ParseConfig(const std::string& yaml, const ServiceConfig& base) {
  ServiceConfig c = base;
  try {
    YAML::Node root = YAML::Load(yaml);
    absl::Status s = ParseInto(root, &c);
    if (!s.ok()) return s;
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config: YAML error: ", e.what()));
  }
  return c;
}

absl::StatusOr<ServiceConfig> LoadConfig(const std::string& path) {
  absl::StatusOr<ServiceConfig> c = ParseConfig(kDefaultYaml, ServiceConfig{});
  if (!c.ok() || path.empty()) return c;
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("config: cannot read '", path, "'"));
  std::stringstream text;
  text << in.rdbuf();
  absl::StatusOr<ServiceConfig> r = ParseConfig(text.str(), *c);
  if (!r.ok())
    return absl::Status(r.status().code(), absl::StrCat(path, ": ", r.status().message()));
  return r;
}

absl::Status ValidateConfig(const ServiceConfig& c) {
  if (c.tls_cert.empty() != c.tls_key.empty()) {
    return absl::InvalidArgumentError("config: security.tls_cert and tls_key go together");
  }
  if (!c.tls_client_ca.empty() && c.tls_cert.empty()) {
    return absl::InvalidArgumentError("config: mTLS (tls_client_ca) needs tls_cert and tls_key");
  }
  if (c.grpc_port < 0 || c.grpc_port > 65535) {
    return absl::InvalidArgumentError("config: grpc_port must be 0..65535");
  }
  if (c.http_port < -1 || c.http_port > 65535) {
    return absl::InvalidArgumentError("config: http_port must be -1..65535");
  }
  if (c.max_message_bytes < kMinMessageBytes || c.max_message_bytes > kMaxMessageBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("config: server.max_message_bytes must be ", kMinMessageBytes, "..",
                     kMaxMessageBytes, " bytes (64KiB..2GiB-1), got ", c.max_message_bytes));
  }
  if (c.get_chunk_bytes + 1024 > c.max_message_bytes) {
    return absl::InvalidArgumentError("config: get_chunk_bytes must be below max_message_bytes");
  }
  if (c.layouts.empty()) return absl::InvalidArgumentError("config: store.layouts is empty");
  if (c.host_bytes == 0) return absl::InvalidArgumentError("config: store.host_bytes must be > 0");
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0 && c.host_bytes > static_cast<uint64_t>(pages) * page) {
    return absl::InvalidArgumentError(absl::StrCat("config: store.host_bytes (", c.host_bytes,
                                                   ") is larger than this machine's memory (",
                                                   uint64_t(pages) * page, ")"));
  }
  if (c.host_segment_bytes == 0 || c.host_segment_bytes % 4096 != 0) {
    return absl::InvalidArgumentError(
        "config: store.host_segment_bytes must be a multiple of 4KiB");
  }
  if (c.ucx && UcxNetDevices(c).empty()) {
    return absl::InvalidArgumentError(
        "config: server.ucx_net_devices must name the network devices UCX serves on (e.g. eth0, "
        "or all) when server.grpc_host is not a loopback address");
  }
  if (!c.etcd_endpoints.empty() && c.advertise_address.empty() &&
      (c.grpc_host.empty() || c.grpc_host == "0.0.0.0" || c.grpc_host == "::" ||
       c.grpc_host == "[::]")) {
    return absl::InvalidArgumentError(
        "config: a cluster node names the address others dial: set cluster.advertise_address "
        "(or a specific server.grpc_host)");
  }
  if (c.data_dir.empty()) return absl::InvalidArgumentError("config: store.data_dir is empty");
  static const std::set<std::string> kLevels = {"trace", "debug", "info", "warn", "error"};
  if (!kLevels.count(c.log_level)) {
    return absl::InvalidArgumentError("config: logging.level must be trace|debug|info|warn|error");
  }
  if (!c.etcd_endpoints.empty() && c.cluster_prefix.empty()) {
    return absl::InvalidArgumentError("config: cluster.prefix is empty");
  }
  if (c.lease_ttl_s < 2)
    return absl::InvalidArgumentError("config: cluster.lease_ttl_s must be >= 2");
  if (!c.allow_unknown_tenants && c.tenants.empty()) {
    return absl::InvalidArgumentError("config: allow_unknown_tenants=false with no tenants listed");
  }
  return absl::OkStatus();
}

bool IsLoopbackHost(const std::string& host) {
  return host == "localhost" || host == "::1" || host == "[::1]" || absl::StartsWith(host, "127.");
}

std::string UcxNetDevices(const ServiceConfig& c) {
  if (!c.ucx_net_devices.empty()) return c.ucx_net_devices;
  return IsLoopbackHost(c.grpc_host) ? "lo" : "";
}

std::string LocalSocketPath(const ServiceConfig& c) {
  if (c.local_socket == "off") return "";
  if (!c.local_socket.empty()) return c.local_socket;
  return c.data_dir + "/pagodad.sock";
}

}  // namespace pagoda::service
