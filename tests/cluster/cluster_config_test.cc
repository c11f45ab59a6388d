// pagodad's `cluster:` config section (issue 7) and a pagodad that starts before its etcd.
#include <gtest/gtest.h>
#include <signal.h>

#include "absl/time/clock.h"
#include "kvstore/cluster/testing/etcd_process.h"
#include "pagoda/cluster/etcd_client.h"
#include "pagoda/service/config.h"
#include "pagodad_process.h"

namespace pagoda {
namespace {

using service::ParseConfig;
using service::ServiceConfig;

absl::StatusOr<ServiceConfig> Parse(const std::string& yaml) {
  absl::StatusOr<ServiceConfig> base = ParseConfig(service::DefaultConfigYaml(), ServiceConfig{});
  if (!base.ok()) return base.status();
  absl::StatusOr<ServiceConfig> c = ParseConfig(yaml, *base);
  if (!c.ok()) return c.status();
  absl::Status v = service::ValidateConfig(*c);
  if (!v.ok()) return v;
  return c;
}

TEST(ClusterConfig, DefaultIsStandalone) {
  auto c = Parse("{}");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->etcd_endpoints.empty());
  EXPECT_EQ(c->lease_ttl_s, 5);
  EXPECT_EQ(c->cluster_prefix, "/pagoda/v1/nodes/");
}

TEST(ClusterConfig, ParsesTheClusterSection) {
  auto c = Parse(R"(
cluster:
  etcd_endpoints: "etcd-0:2379, etcd-1:2379 ,etcd-2:2379"
  node_id: gpu-node-7
  advertise_address: 10.1.2.3
  prefix: /pagoda/test/nodes/
  lease_ttl_s: 3
)");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->etcd_endpoints,
            (std::vector<std::string>{"etcd-0:2379", "etcd-1:2379", "etcd-2:2379"}));
  EXPECT_EQ(c->node_id, "gpu-node-7");
  EXPECT_EQ(c->advertise_address, "10.1.2.3");
  EXPECT_EQ(c->cluster_prefix, "/pagoda/test/nodes/");
  EXPECT_EQ(c->lease_ttl_s, 3);
}

TEST(ClusterConfig, RejectsBadValues) {
  for (const char* yaml : {
           "cluster: {lease_ttl_s: 1}",
           "cluster: {lease_ttl_s: 99999}",
           "cluster: {lease_ttl_s: soon}",
           "cluster: {etcd: x}",  // unknown key
           "cluster: {etcd_endpoints: 'a:1', prefix: ''}",
           "cluster: [1, 2]",
       }) {
    EXPECT_TRUE(absl::IsInvalidArgument(Parse(yaml).status())) << yaml;
  }
}

// A node started while etcd is down serves at once and joins the cluster when etcd comes up.
TEST(ClusterPagodad, StartsBeforeEtcdAndRegistersWhenItAnswers) {
  auto etcd = cluster::testing::EtcdProcess::Start();
  ASSERT_TRUE(etcd.ok()) << etcd.status();
  ASSERT_TRUE((*etcd)->Stop().ok());
  pagoda::testing::PagodadProcess::Options o;
  o.config_yaml = pagoda::testing::TestConfigYaml() + "cluster: {lease_ttl_s: 2}\n";
  o.extra_args = {"--etcd", (*etcd)->endpoint(), "--node-id", "early-node"};
  auto node = pagoda::testing::PagodadProcess::Start(o);
  ASSERT_TRUE(node.ok()) << node.status();
  auto client =
      Client::Connect((*node)->ClientOpts("t", DataPathKind::kRemote));  // serving without etcd
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE((*etcd)->Restart().ok());
  cluster::EtcdOptions eo;
  eo.endpoints = {(*etcd)->endpoint()};
  auto view = cluster::EtcdClient::Create(eo);
  ASSERT_TRUE(view.ok());
  bool registered = false;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!registered && absl::Now() < deadline) {
    auto r = (*view)->Get("/pagoda/v1/nodes/early-node");
    registered = r.ok() && r->kvs.size() == 1;
    if (!registered) absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(registered) << (*node)->Log();
  // SIGTERM: the node leaves the cluster at once (lease revoked), then exits cleanly.
  auto code = (*node)->Stop(SIGTERM);
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 0);
  EXPECT_TRUE((*view)->Get("/pagoda/v1/nodes/early-node")->kvs.empty());
}

}  // namespace
}  // namespace pagoda
