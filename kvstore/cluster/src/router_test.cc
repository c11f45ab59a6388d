#include "pagoda/cluster/router.h"

#include <gtest/gtest.h>

#include <random>

#include "absl/strings/str_cat.h"

namespace pagoda::cluster {
namespace {

std::shared_ptr<const Placement> Cluster(int n) {
  std::vector<NodeInfo> nodes;
  for (int i = 0; i < n; ++i) {
    NodeInfo node;
    node.id = absl::StrCat("n", i);
    node.address = "127.0.0.1";
    node.grpc_port = 1000 + i;
    nodes.push_back(node);
  }
  return std::make_shared<const Placement>(nodes);
}

std::vector<std::string> Ids(const std::vector<NodeInfo>& nodes) {
  std::vector<std::string> ids;
  for (const NodeInfo& n : nodes) ids.push_back(n.id);
  return ids;
}

TEST(Router, RoutesToTheTopRByRank) {
  auto placement = Cluster(5);
  RouterOptions o;
  o.replication = 2;
  auto router = Router::Create([placement] { return placement; }, o);
  ASSERT_TRUE(router.ok());
  std::mt19937_64 rng(7);
  for (int i = 0; i < 200; ++i) {
    const absl::uint128 key = absl::MakeUint128(rng(), rng());
    std::vector<std::string> want;
    for (size_t idx : placement->Rank(key, 2)) want.push_back(placement->nodes()[idx].id);
    ASSERT_EQ(Ids((*router)->Route(key)), want);
  }
}

TEST(Router, RoutesAroundSuspectsUntilTheyRecover) {
  auto placement = Cluster(3);
  RouterOptions o;
  o.replication = 2;
  o.suspect_for = absl::Milliseconds(300);
  auto router = *Router::Create([placement] { return placement; }, o);
  const absl::uint128 key = 12345;
  const std::vector<std::string> normal = Ids(router->Route(key));
  ASSERT_EQ(normal.size(), 2u);
  router->ReportFailure(normal[0]);
  EXPECT_TRUE(router->IsSuspect(normal[0]));
  std::vector<std::string> around = Ids(router->Route(key));
  ASSERT_EQ(around.size(), 2u);
  EXPECT_EQ(around[0], normal[1]);  // the second replica moves up
  EXPECT_NE(around[1], normal[0]);  // the third node fills in
  absl::SleepFor(absl::Milliseconds(400));
  EXPECT_FALSE(router->IsSuspect(normal[0]));
  EXPECT_EQ(Ids(router->Route(key)), normal);
  router->ReportFailure(normal[0]);
  router->ReportSuccess(normal[0]);
  EXPECT_EQ(Ids(router->Route(key)), normal);
}

TEST(Router, SuspectsFillInWhenTooFewHealthyNodes) {
  auto placement = Cluster(2);
  RouterOptions o;
  o.replication = 2;
  auto router = *Router::Create([placement] { return placement; }, o);
  const std::vector<std::string> normal = Ids(router->Route(99));
  router->ReportFailure(normal[0]);
  EXPECT_EQ(Ids(router->Route(99)), (std::vector<std::string>{normal[1], normal[0]}));
  router->ReportFailure(normal[1]);
  EXPECT_EQ(Ids(router->Route(99)), normal);  // all suspect: plain rank order
}

TEST(Router, SmallOrEmptyClusters) {
  RouterOptions o;
  o.replication = 3;
  auto two = Cluster(2);
  EXPECT_EQ((*Router::Create([two] { return two; }, o))->Route(1).size(), 2u);
  auto none = Cluster(0);
  EXPECT_TRUE((*Router::Create([none] { return none; }, o))->Route(1).empty());
  EXPECT_TRUE((*Router::Create([] { return nullptr; }, o))->Route(1).empty());
}

TEST(Router, FollowsTheSourceAsMembershipChanges) {
  std::shared_ptr<const Placement> current = Cluster(3);
  auto router = *Router::Create([&current] { return current; });
  const std::string owner = router->Route(5).at(0).id;
  std::vector<NodeInfo> rest;
  for (const NodeInfo& n : current->nodes()) {
    if (n.id != owner) rest.push_back(n);
  }
  current = std::make_shared<const Placement>(rest);
  EXPECT_NE(router->Route(5).at(0).id, owner);
}

TEST(Router, RejectsBadOptions) {
  auto p = Cluster(1);
  RouterOptions o;
  o.replication = 0;
  EXPECT_TRUE(absl::IsInvalidArgument(Router::Create([p] { return p; }, o).status()));
  o.replication = 1;
  o.suspect_for = absl::Seconds(-1);
  EXPECT_TRUE(absl::IsInvalidArgument(Router::Create([p] { return p; }, o).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(Router::Create(nullptr).status()));
}

}  // namespace
}  // namespace pagoda::cluster
