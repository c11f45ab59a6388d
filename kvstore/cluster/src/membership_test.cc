#include "pagoda/cluster/membership.h"

#include <gtest/gtest.h>
#include <signal.h>

#include "absl/strings/str_cat.h"
#include "kvstore/cluster/testing/etcd_process.h"

namespace pagoda::cluster {
namespace {

using testing::EtcdProcess;

NodeInfo Node(const std::string& id) {
  NodeInfo n;
  n.id = id;
  n.address = "127.0.0.1";
  n.grpc_port = 7000;
  return n;
}

RegistrationOptions FastOptions() {
  RegistrationOptions o;
  o.lease_ttl_seconds = 2;
  o.keepalive_interval = absl::Milliseconds(300);
  o.retry_interval = absl::Milliseconds(100);
  return o;
}

auto HasIds(std::vector<std::string> ids) {
  return [ids](const Placement& p) {
    if (p.size() != ids.size()) return false;
    for (const std::string& id : ids) {
      if (p.Find(id) < 0) return false;
    }
    return true;
  };
}

class MembershipTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto etcd = EtcdProcess::Start();
    ASSERT_TRUE(etcd.ok()) << etcd.status();
    etcd_ = std::move(*etcd);
    EtcdOptions options;
    options.endpoints = {etcd_->endpoint()};
    options.rpc_timeout = absl::Milliseconds(500);
    options.max_reconnect_backoff = absl::Milliseconds(200);
    nodes_client_ = *EtcdClient::Create(options);
    watcher_client_ = *EtcdClient::Create(options);
  }

  std::unique_ptr<EtcdProcess> etcd_;
  std::unique_ptr<EtcdClient> nodes_client_;
  std::unique_ptr<EtcdClient> watcher_client_;
};

TEST_F(MembershipTest, ListsExistingNodesAtStart) {
  auto a = NodeRegistration::Start(nodes_client_.get(), Node("a"), FastOptions());
  ASSERT_TRUE(a.ok());
  auto m = Membership::Start(watcher_client_.get());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_TRUE(HasIds({"a"})(*(*m)->placement()));
}

TEST_F(MembershipTest, FollowsJoinsLeavesAndExpiries) {
  auto m = Membership::Start(watcher_client_.get());
  ASSERT_TRUE(m.ok());
  EXPECT_EQ((*m)->placement()->size(), 0u);
  const uint64_t gen0 = (*m)->generation();
  auto a = NodeRegistration::Start(nodes_client_.get(), Node("a"), FastOptions());
  auto b = NodeRegistration::Start(nodes_client_.get(), Node("b"), FastOptions());
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE((*m)->WaitUntil(HasIds({"a", "b"}), absl::Seconds(5)));
  EXPECT_GT((*m)->generation(), gen0);
  (*a)->Stop(/*deregister=*/true);
  ASSERT_TRUE((*m)->WaitUntil(HasIds({"b"}), absl::Seconds(5)));
  (*b)->Stop(/*deregister=*/false);  // crash: gone once the lease expires
  const absl::Time t0 = absl::Now();
  ASSERT_TRUE((*m)->WaitUntil(HasIds({}), absl::Seconds(10)));
  EXPECT_GE(absl::Now() - t0, absl::Seconds(1));
}

TEST_F(MembershipTest, SkipsMalformedEntries) {
  ASSERT_TRUE(nodes_client_->Put(absl::StrCat(kDefaultNodesPrefix, "junk"), "{not json").ok());
  // A valid JSON whose id disagrees with its key is refused too.
  ASSERT_TRUE(
      nodes_client_->Put(absl::StrCat(kDefaultNodesPrefix, "x"), NodeInfoToJson(Node("y"))).ok());
  auto m = Membership::Start(watcher_client_.get());
  ASSERT_TRUE(m.ok());
  EXPECT_EQ((*m)->placement()->size(), 0u);
  auto a = NodeRegistration::Start(nodes_client_.get(), Node("a"), FastOptions());
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE((*m)->WaitUntil(HasIds({"a"}), absl::Seconds(5)));
  // A node entry overwritten with garbage leaves the set.
  ASSERT_TRUE(nodes_client_->Put(absl::StrCat(kDefaultNodesPrefix, "a"), "garbage").ok());
  ASSERT_TRUE((*m)->WaitUntil(HasIds({}), absl::Seconds(5)));
}

TEST_F(MembershipTest, KeepsLastViewWhileEtcdIsDownAndResyncsAfter) {
  auto a = NodeRegistration::Start(nodes_client_.get(), Node("a"), FastOptions());
  auto b = NodeRegistration::Start(nodes_client_.get(), Node("b"), FastOptions());
  ASSERT_TRUE(a.ok() && b.ok());
  auto m = Membership::Start(watcher_client_.get());
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE((*m)->WaitUntil(HasIds({"a", "b"}), absl::Seconds(5)));
  etcd_->Kill();
  ASSERT_TRUE(etcd_->WipeData().ok());
  absl::SleepFor(absl::Seconds(1));
  EXPECT_TRUE(HasIds({"a", "b"})(*(*m)->placement()));  // stale but usable
  (*b)->Stop(/*deregister=*/false);                     // b dies while etcd is down
  ASSERT_TRUE(etcd_->Restart().ok());
  // Only a re-registers into the empty etcd; the watcher re-lists and sees just a.
  ASSERT_TRUE((*m)->WaitUntil(HasIds({"a"}), absl::Seconds(10)));
}

TEST_F(MembershipTest, StopsPromptlyWhileEtcdHangs) {
  auto a = NodeRegistration::Start(nodes_client_.get(), Node("a"), FastOptions());
  ASSERT_TRUE(a.ok());
  auto m = Membership::Start(watcher_client_.get());
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE((*m)->WaitUntil(HasIds({"a"}), absl::Seconds(5)));
  etcd_->Signal(SIGSTOP);  // connections stay open, nothing answers
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_TRUE(HasIds({"a"})(*(*m)->placement()));
  const absl::Time t0 = absl::Now();
  m->reset();
  (*a)->Stop(/*deregister=*/false);
  // Bounded by the etcd client's per-call deadline (500 ms here), never by etcd coming back.
  EXPECT_LT(absl::Now() - t0, absl::Seconds(5));
  etcd_->Signal(SIGCONT);
}

TEST_F(MembershipTest, RejectsBadOptions) {
  MembershipOptions o;
  o.prefix = "";
  EXPECT_TRUE(absl::IsInvalidArgument(Membership::Start(watcher_client_.get(), o).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(Membership::Start(nullptr).status()));
  etcd_->Kill();
  EXPECT_FALSE(Membership::Start(watcher_client_.get()).ok());
}

}  // namespace
}  // namespace pagoda::cluster
