#include "pagoda/cluster/placement.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>

#include "absl/strings/str_cat.h"

namespace pagoda::cluster {
namespace {

std::vector<NodeInfo> Nodes(int n, int first = 0) {
  std::vector<NodeInfo> out;
  for (int i = first; i < first + n; ++i) {
    NodeInfo node;
    node.id = absl::StrCat("node-", i);
    node.address = "127.0.0.1";
    node.grpc_port = 1000 + i;
    out.push_back(node);
  }
  return out;
}

std::vector<absl::uint128> Keys(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<absl::uint128> keys;
  for (size_t i = 0; i < n; ++i) keys.push_back(absl::MakeUint128(rng(), rng()));
  return keys;
}

const std::string& Owner(const Placement& p, absl::uint128 key) {
  return p.nodes()[p.Rank(key, 1).at(0)].id;
}

TEST(Placement, SameRankingWhateverTheInputOrder) {
  std::vector<NodeInfo> a = Nodes(7);
  std::vector<NodeInfo> b = a;
  std::reverse(b.begin(), b.end());
  Placement pa(a), pb(b);
  for (absl::uint128 k : Keys(2000, 1)) {
    std::vector<std::string> ra, rb;
    for (size_t i : pa.Rank(k, 3)) ra.push_back(pa.nodes()[i].id);
    for (size_t i : pb.Rank(k, 3)) rb.push_back(pb.nodes()[i].id);
    ASSERT_EQ(ra, rb);
  }
}

TEST(Placement, ReplicasAreDistinctAndCapped) {
  Placement p(Nodes(3));
  for (absl::uint128 k : Keys(500, 2)) {
    std::vector<size_t> r = p.Rank(k, 3);
    ASSERT_EQ(std::set<size_t>(r.begin(), r.end()).size(), 3u);
    ASSERT_EQ(p.Rank(k, 10).size(), 3u);
    ASSERT_EQ(p.Rank(k, 2), std::vector<size_t>(r.begin(), r.begin() + 2));
  }
  EXPECT_TRUE(Placement({}).Rank(1, 2).empty());
}

TEST(Placement, SpreadsKeysEvenly) {
  Placement p(Nodes(5));
  std::map<std::string, int> count;
  const auto keys = Keys(100000, 3);
  for (absl::uint128 k : keys) ++count[Owner(p, k)];
  ASSERT_EQ(count.size(), 5u);
  for (const auto& [id, c] : count) {
    EXPECT_NEAR(c, 20000, 1000) << id;  // within 5% of a fair share
  }
}

TEST(Placement, RemovingANodeMovesOnlyItsKeys) {
  std::vector<NodeInfo> nodes = Nodes(5);
  Placement before(nodes);
  nodes.erase(nodes.begin() + 2);  // node-2 leaves
  Placement after(nodes);
  int moved = 0;
  for (absl::uint128 k : Keys(20000, 4)) {
    const std::string& was = Owner(before, k);
    const std::string& now = Owner(after, k);
    if (was != "node-2") {
      ASSERT_EQ(was, now);
    } else {
      ++moved;
      // A leaving node's keys go to their old second choice, so replicas take over.
      ASSERT_EQ(now, before.nodes()[before.Rank(k, 2)[1]].id);
    }
  }
  EXPECT_GT(moved, 0);
}

TEST(Placement, AddingANodeTakesKeysOnlyToIt) {
  Placement before(Nodes(4));
  Placement after(Nodes(5));
  int taken = 0;
  for (absl::uint128 k : Keys(20000, 5)) {
    const std::string& now = Owner(after, k);
    if (now == "node-4") {
      ++taken;
    } else {
      ASSERT_EQ(now, Owner(before, k));
    }
  }
  EXPECT_NEAR(taken, 4000, 600);
}

TEST(Placement, WeightsScaleTheShare) {
  std::vector<NodeInfo> nodes = Nodes(3);
  nodes[0].weight = 2.0;  // node-0 should get 2/4 of the keys
  Placement p(nodes);
  int heavy = 0;
  const auto keys = Keys(40000, 6);
  for (absl::uint128 k : keys) heavy += Owner(p, k) == "node-0";
  EXPECT_NEAR(heavy, 20000, 1000);
}

TEST(Placement, DuplicateIdKeepsTheLaterEntry) {
  std::vector<NodeInfo> nodes = Nodes(2);
  NodeInfo dup = nodes[0];
  dup.grpc_port = 4242;
  nodes.push_back(dup);
  Placement p(nodes);
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p.nodes()[p.Find("node-0")].grpc_port, 4242);
  EXPECT_EQ(p.Find("absent"), -1);
}

TEST(Placement, HashDependsOnEveryKeyBit) {
  const uint64_t seed = NodeSeed("n");
  const absl::uint128 base = absl::MakeUint128(0x0123456789abcdefULL, 0xfedcba9876543210ULL);
  for (int bit = 0; bit < 128; ++bit) {
    ASSERT_NE(RendezvousHash(base, seed), RendezvousHash(base ^ (absl::uint128(1) << bit), seed))
        << bit;
  }
  EXPECT_NE(NodeSeed("a"), NodeSeed("b"));
}

}  // namespace
}  // namespace pagoda::cluster
