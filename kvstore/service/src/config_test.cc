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
