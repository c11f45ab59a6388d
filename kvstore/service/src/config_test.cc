#include "pagoda/service/config.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

namespace pagoda::service {
namespace {

TEST(ConfigTest, EmbeddedDefaultParsesAndValidates) {
  absl::StatusOr<ServiceConfig> c = LoadConfig("");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(ValidateConfig(*c).ok());
  EXPECT_EQ(c->grpc_port, 50051);
  EXPECT_EQ(c->host_bytes, 1ull << 30);
  EXPECT_EQ(c->ssd_bytes, 8ull << 30);
  EXPECT_EQ(c->max_message_bytes, 8ull << 20);
  EXPECT_EQ(LocalSocketPath(*c), "./pagoda-data/pagodad.sock");
  ASSERT_EQ(c->layouts.size(), 6u);
  EXPECT_EQ(c->layouts[1].dtype, "bf16");
  EXPECT_EQ(c->layouts[4].page_tokens, 64u);
}

TEST(ConfigTest, LayoutsReplaceTheDefaultList) {
  absl::StatusOr<ServiceConfig> base = LoadConfig("");
  ASSERT_TRUE(base.ok());
  absl::StatusOr<ServiceConfig> c = ParseConfig(
      "store: {layouts: [{dtype: bf16, kv_heads: 2, head_dim: 64, page_tokens: 32}]}", *base);
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->layouts.size(), 1u);
  EXPECT_EQ(c->layouts[0].kv_heads, 2u);
  EXPECT_EQ(c->layouts[0].head_dim, 64u);
  EXPECT_FALSE(ParseConfig("store: {layouts: [{dtype: fp8}]}", *base).ok());
  EXPECT_FALSE(ParseConfig("store: {layouts: []}", *base).ok());
  EXPECT_FALSE(ParseConfig("store: {layouts: [{kv_heads: 0}]}", *base).ok());
}

TEST(ConfigTest, FileOverridesOnlyTheFieldsItNames) {
  absl::StatusOr<ServiceConfig> base = LoadConfig("");
  ASSERT_TRUE(base.ok());
  absl::StatusOr<ServiceConfig> c = ParseConfig(R"(
server: {grpc_port: 0, local_socket: "off"}
store: {host_bytes: 64MiB, data_dir: /tmp/x}
security: {token: s3cret}
tenants:
  alice: {token: a-token, quota_bytes: 2MiB}
  bob: {}
logging: {level: debug}
)",
                                                *base);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->grpc_port, 0);
  EXPECT_EQ(c->http_port, 9464);  // untouched
  EXPECT_EQ(c->host_bytes, 64ull << 20);
  EXPECT_EQ(c->ssd_bytes, 8ull << 30);  // untouched
  EXPECT_EQ(c->token, "s3cret");
  ASSERT_EQ(c->tenants.size(), 2u);
  EXPECT_EQ(c->tenants.at("alice").quota_bytes, 2ull << 20);
  EXPECT_EQ(c->tenants.at("alice").token, "a-token");
  EXPECT_EQ(c->tenants.at("bob").quota_bytes, 0u);
  EXPECT_EQ(c->log_level, "debug");
  EXPECT_EQ(LocalSocketPath(*c), "");
  EXPECT_TRUE(ValidateConfig(*c).ok());
}

TEST(ConfigTest, BadInputGetsAClearErrorNamingTheKey) {
  ServiceConfig base;
  struct Case {
    const char* yaml;
    const char* needle;
  } cases[] = {
      {"server: {grpc_prot: 1}", "server.grpc_prot"},
      {"bogus: 1", "bogus"},
      {"server: {grpc_port: 70000}", "server.grpc_port"},
      {"server: {grpc_port: abc}", "server.grpc_port"},
      {"store: {host_bytes: 12XB}", "store.host_bytes"},
      {"store: {host_bytes: -5}", "store.host_bytes"},
      {"logging: {json: maybe}", "logging.json"},
      {"tenants: [a, b]", "tenants"},
      {"server: [", "YAML"},
      // Every numeric key is checked against the range it really has (2GiB used to wrap to
      // INT_MIN in gRPC's int).
      {"server: {max_message_bytes: 2GiB}", "server.max_message_bytes"},
      {"server: {max_message_bytes: 32KiB}", "server.max_message_bytes"},
      {"server: {get_chunk_bytes: 0}", "server.get_chunk_bytes"},
      {"server: {local_max_connections: 0}", "server.local_max_connections"},
      {"server: {local_threads: 0}", "server.local_threads"},
      {"server: {local_handshake_ms: 0}", "server.local_handshake_ms"},
      {"server: {reservation_timeout_ms: 5}", "server.reservation_timeout_ms"},
      {"server: {grpc_keepalive_ms: 10}", "server.grpc_keepalive_ms"},
      {"server: {grpc_max_threads: 1}", "server.grpc_max_threads"},
      {"server: {ucx_lease_ms: 0}", "server.ucx_lease_ms"},
      {"store: {host_bytes: 100}", "store.host_bytes"},
      {"store: {host_segment_bytes: 100000}", "store.host_segment_bytes"},
      {"store: {host_slot_bytes: 64KiB}", "store.host_slot_bytes"},
      {"store: {ssd_bytes: 1000}", "store.ssd_bytes"},
      {"security: {local_allowed_uids: [1, x]}", "security.local_allowed_uids"},
      {"security: {local_allowed_gids: [-1]}", "security.local_allowed_gids"},
      {"- 1\n- 2", "mapping"},
  };
  for (const Case& k : cases) {
    absl::StatusOr<ServiceConfig> c = ParseConfig(k.yaml, base);
    ASSERT_FALSE(c.ok()) << k.yaml;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << k.yaml;
    EXPECT_NE(c.status().message().find(k.needle), std::string::npos)
        << k.yaml << " -> " << c.status();
  }
}

TEST(ConfigTest, ValidateRejectsInconsistentSecurity) {
  ServiceConfig c;
  c.tls_cert = "cert.pem";
  EXPECT_EQ(ValidateConfig(c).code(), absl::StatusCode::kInvalidArgument);
  c = ServiceConfig{};
  c.tls_client_ca = "ca.pem";
  EXPECT_EQ(ValidateConfig(c).code(), absl::StatusCode::kInvalidArgument);
  c = ServiceConfig{};
  c.allow_unknown_tenants = false;
  EXPECT_EQ(ValidateConfig(c).code(), absl::StatusCode::kInvalidArgument);
  c = ServiceConfig{};
  c.log_level = "loud";
  EXPECT_EQ(ValidateConfig(c).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ConfigTest, LoopbackByDefaultAndClustersNameTheirAddresses) {
  absl::StatusOr<ServiceConfig> d = LoadConfig("");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->grpc_host, "127.0.0.1");
  EXPECT_EQ(d->http_host, "127.0.0.1");
  EXPECT_FALSE(d->ucx);
  EXPECT_EQ(UcxNetDevices(*d), "lo");
  // UCX on a non-loopback gRPC address must be told its devices.
  absl::StatusOr<ServiceConfig> c = ParseConfig("server: {grpc_host: 0.0.0.0, ucx: true}", *d);
  ASSERT_TRUE(c.ok());
  absl::Status v = ValidateConfig(*c);
  EXPECT_EQ(v.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(v.message().find("ucx_net_devices"), std::string::npos) << v;
  c = ParseConfig("server: {ucx_net_devices: eth0}", *c);
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(ValidateConfig(*c).ok());
  EXPECT_EQ(UcxNetDevices(*c), "eth0");
  // A cluster node on a wildcard address names the address others dial.
  c = ParseConfig("cluster: {etcd_endpoints: \"10.0.0.1:2379\"}", *c);
  ASSERT_TRUE(c.ok());
  v = ValidateConfig(*c);
  EXPECT_NE(v.message().find("advertise_address"), std::string::npos) << v;
  c = ParseConfig("cluster: {advertise_address: 10.0.0.2}", *c);
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(ValidateConfig(*c).ok());
}

TEST(ConfigTest, RangesAcceptTheirEdgesAndIdLists) {
  absl::StatusOr<ServiceConfig> d = LoadConfig("");
  ASSERT_TRUE(d.ok());
  absl::StatusOr<ServiceConfig> c = ParseConfig(
      "server: {max_message_bytes: 2147483647}\n"
      "security: {local_allowed_uids: \"1000, 1001\", local_allowed_gids: [5, 6]}",
      *d);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->max_message_bytes, 2147483647u);
  EXPECT_TRUE(ValidateConfig(*c).ok());
  EXPECT_EQ(c->local_allowed_uids, (std::vector<uint32_t>{1000, 1001}));
  EXPECT_EQ(c->local_allowed_gids, (std::vector<uint32_t>{5, 6}));
  // A value set outside the parser (a flag) is still checked.
  ServiceConfig big = *d;
  big.max_message_bytes = 2ull << 30;
  EXPECT_EQ(ValidateConfig(big).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ConfigTest, EtcdTlsFilesAreRead) {
  absl::StatusOr<ServiceConfig> base = LoadConfig("");
  ASSERT_TRUE(base.ok());
  EXPECT_TRUE(base->etcd_ca.empty() && base->etcd_cert.empty() && base->etcd_key.empty());
  absl::StatusOr<ServiceConfig> c = ParseConfig(
      "cluster: {etcd_endpoints: 'https://e1:2379, https://e2:2379', etcd_ca: /tls/ca.crt, "
      "etcd_cert: /tls/tls.crt, etcd_key: /tls/tls.key}",
      *base);
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->etcd_endpoints.size(), 2u);
  EXPECT_EQ(c->etcd_endpoints[1], "https://e2:2379");
  EXPECT_EQ(c->etcd_ca, "/tls/ca.crt");
  EXPECT_EQ(c->etcd_cert, "/tls/tls.crt");
  EXPECT_EQ(c->etcd_key, "/tls/tls.key");
  EXPECT_FALSE(ParseConfig("cluster: {etcd_tls: x}", *base).ok());
}

TEST(ConfigTest, MissingFileIsNotFound) {
  EXPECT_EQ(LoadConfig("/nonexistent/pagoda.yaml").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace pagoda::service
