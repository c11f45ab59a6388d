#include "pagoda/cluster/registration.h"

#include <gtest/gtest.h>

#include "kvstore/cluster/testing/etcd_process.h"

namespace pagoda::cluster {
namespace {

using testing::EtcdProcess;

NodeInfo Node(const std::string& id, int port) {
  NodeInfo n;
  n.id = id;
  n.address = "127.0.0.1";
  n.grpc_port = port;
  n.tiers = {"host"};
  n.capacity_bytes = {{"host", 1 << 20}};
  return n;
}

RegistrationOptions FastOptions() {
  RegistrationOptions o;
  o.lease_ttl_seconds = 2;
  o.keepalive_interval = absl::Milliseconds(300);
  o.retry_interval = absl::Milliseconds(100);
  return o;
}

class RegistrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto etcd = EtcdProcess::Start();
    ASSERT_TRUE(etcd.ok()) << etcd.status();
    etcd_ = std::move(*etcd);
    EtcdOptions options;
    options.endpoints = {etcd_->endpoint()};
    options.rpc_timeout = absl::Milliseconds(500);
    options.max_reconnect_backoff = absl::Milliseconds(200);
    client_ = *EtcdClient::Create(options);
  }

  // Polls until the node key is present (or absent) or the timeout passes.
  bool WaitForKey(const std::string& key, bool present, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      auto r = client_->Get(key);
      if (r.ok() && r->kvs.empty() != present) return true;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return false;
  }

  // Polls until `reg` counts at least `n` registrations. The node key becomes visible in etcd a
  // moment before the registration thread updates its counter, so a test that saw the key waits
  // here rather than reading the counter at once.
  static bool WaitForRegistrations(const NodeRegistration& reg, int64_t n, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      if (reg.registrations() >= n) return true;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return reg.registrations() >= n;
  }

  std::unique_ptr<EtcdProcess> etcd_;
  std::unique_ptr<EtcdClient> client_;
};

TEST_F(RegistrationTest, PublishesNodeInfoUnderALease) {
  const NodeInfo node = Node("n1", 7001);
  auto reg = NodeRegistration::Start(client_.get(), node, FastOptions());
  ASSERT_TRUE(reg.ok()) << reg.status();
  EXPECT_TRUE((*reg)->registered());
  EXPECT_EQ((*reg)->key(), std::string(kDefaultNodesPrefix) + "n1");
  auto got = client_->Get((*reg)->key());
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(got->kvs.size(), 1u);
  EXPECT_NE(got->kvs[0].lease, 0);
  EXPECT_EQ(*NodeInfoFromJson(got->kvs[0].value), node);
  // Keep-alives hold the key well past the 2 s TTL.
  absl::SleepFor(absl::Seconds(3));
  EXPECT_EQ(client_->Get((*reg)->key())->kvs.size(), 1u);
  EXPECT_EQ((*reg)->registrations(), 1);
}

TEST_F(RegistrationTest, GracefulStopLeavesAtOnce) {
  auto reg = NodeRegistration::Start(client_.get(), Node("n1", 7001), FastOptions());
  ASSERT_TRUE(reg.ok());
  const std::string key = (*reg)->key();
  (*reg)->Stop(/*deregister=*/true);
  EXPECT_TRUE(client_->Get(key)->kvs.empty());
}

TEST_F(RegistrationTest, CrashedNodeDropsOutWhenItsLeaseExpires) {
  auto reg = NodeRegistration::Start(client_.get(), Node("n1", 7001), FastOptions());
  ASSERT_TRUE(reg.ok());
  const std::string key = (*reg)->key();
  const absl::Time stopped = absl::Now();
  (*reg)->Stop(/*deregister=*/false);  // keep-alives stop, like a kill -9
  EXPECT_EQ(client_->Get(key)->kvs.size(), 1u);
  ASSERT_TRUE(WaitForKey(key, /*present=*/false, absl::Seconds(10)));
  EXPECT_GE(absl::Now() - stopped, absl::Seconds(1));  // not before the lease ran out
}

TEST_F(RegistrationTest, ReRegistersAfterKeyIsDeleted) {
  auto reg = NodeRegistration::Start(client_.get(), Node("n1", 7001), FastOptions());
  ASSERT_TRUE(reg.ok());
  ASSERT_EQ(*client_->Delete((*reg)->key()), 1);
  ASSERT_TRUE(WaitForKey((*reg)->key(), true, absl::Seconds(5)));
  EXPECT_TRUE(WaitForRegistrations(**reg, 2, absl::Seconds(2)));
}

TEST_F(RegistrationTest, ReRegistersAfterEtcdRestartsEmpty) {
  auto reg = NodeRegistration::Start(client_.get(), Node("n1", 7001), FastOptions());
  ASSERT_TRUE(reg.ok());
  const std::string key = (*reg)->key();
  etcd_->Kill();
  ASSERT_TRUE(etcd_->WipeData().ok());
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_FALSE((*reg)->registered());
  ASSERT_TRUE(etcd_->Restart().ok());
  ASSERT_TRUE(WaitForKey(key, true, absl::Seconds(10)));
  EXPECT_TRUE(WaitForRegistrations(**reg, 2, absl::Seconds(2)));
  absl::SleepFor(absl::Milliseconds(400));
  EXPECT_TRUE((*reg)->registered());
}

TEST_F(RegistrationTest, SurvivesEtcdRestartWithItsData) {
  auto reg = NodeRegistration::Start(client_.get(), Node("n1", 7001), FastOptions());
  ASSERT_TRUE(reg.ok());
  const std::string key = (*reg)->key();
  ASSERT_TRUE(etcd_->Stop().ok());
  ASSERT_TRUE(etcd_->Restart().ok());
  ASSERT_TRUE(WaitForKey(key, true, absl::Seconds(10)));
  absl::SleepFor(absl::Seconds(3));  // past the TTL: keep-alives resumed on the old or a new lease
  EXPECT_EQ(client_->Get(key)->kvs.size(), 1u);
}

TEST_F(RegistrationTest, RestartedNodeTakesOverItsKey) {
  auto first = NodeRegistration::Start(client_.get(), Node("n1", 7001), FastOptions());
  ASSERT_TRUE(first.ok());
  (*first)->Stop(/*deregister=*/false);  // crashed; its lease still runs
  auto second = NodeRegistration::Start(client_.get(), Node("n1", 7002), FastOptions());
  ASSERT_TRUE(second.ok()) << second.status();
  // The old lease's expiry must not remove the new registration.
  absl::SleepFor(absl::Seconds(3));
  auto got = client_->Get((*second)->key());
  ASSERT_EQ(got->kvs.size(), 1u);
  EXPECT_EQ(NodeInfoFromJson(got->kvs[0].value)->grpc_port, 7002);
}

TEST_F(RegistrationTest, RejectsBadInputAndWritesNothing) {
  NodeInfo bad = Node("bad id", 7001);
  EXPECT_TRUE(
      absl::IsInvalidArgument(NodeRegistration::Start(client_.get(), bad, FastOptions()).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(
      NodeRegistration::Start(nullptr, Node("n", 1), FastOptions()).status()));
  RegistrationOptions o = FastOptions();
  o.lease_ttl_seconds = 1;
  EXPECT_TRUE(
      absl::IsInvalidArgument(NodeRegistration::Start(client_.get(), Node("n", 1), o).status()));
  o = FastOptions();
  o.keepalive_interval = absl::Seconds(2);
  EXPECT_TRUE(
      absl::IsInvalidArgument(NodeRegistration::Start(client_.get(), Node("n", 1), o).status()));
  o = FastOptions();
  o.prefix = "";
  EXPECT_TRUE(
      absl::IsInvalidArgument(NodeRegistration::Start(client_.get(), Node("n", 1), o).status()));
  EXPECT_TRUE(client_->GetPrefix("/")->kvs.empty());
}

TEST_F(RegistrationTest, StartFailsWhenEtcdIsDown) {
  etcd_->Kill();
  auto reg = NodeRegistration::Start(client_.get(), Node("n1", 7001), FastOptions());
  EXPECT_FALSE(reg.ok());
}

TEST_F(RegistrationTest, CanStartUnregisteredAndRegisterOnceEtcdAnswers) {
  ASSERT_TRUE(etcd_->Stop().ok());
  RegistrationOptions o = FastOptions();
  o.require_first_registration = false;
  auto reg = NodeRegistration::Start(client_.get(), Node("n1", 7001), o);
  ASSERT_TRUE(reg.ok()) << reg.status();
  EXPECT_FALSE((*reg)->registered());
  EXPECT_EQ((*reg)->registrations(), 0);
  ASSERT_TRUE(etcd_->Restart().ok());
  ASSERT_TRUE(WaitForKey((*reg)->key(), true, absl::Seconds(10)));
  ASSERT_TRUE(WaitForRegistrations(**reg, 1, absl::Seconds(2)));
  absl::SleepFor(absl::Milliseconds(300));  // a few keep-alive rounds: no second registration
  EXPECT_EQ((*reg)->registrations(), 1);
}

}  // namespace
}  // namespace pagoda::cluster
