// Replication logic against in-process nodes (maps of key -> bytes). The real thing — pagodad
// processes, kill -9, partitions — is exercised by tests/cluster.
#include "pagoda/cluster/replication.h"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace pagoda::cluster {
namespace {

struct FakeCluster {
  absl::Mutex mu;
  std::map<std::string, std::map<absl::uint128, std::string>> data;  // node -> key -> bytes
  std::set<std::string> down;
  std::set<std::string> refuse;  // nodes that answer writes with ResourceExhausted
  std::map<std::string, int> calls;
};

class ReplicationTest : public ::testing::Test {
 protected:
  void Make(int nodes, int replication) {
    std::vector<NodeInfo> list;
    for (int i = 0; i < nodes; ++i) {
      NodeInfo n;
      n.id = absl::StrCat("n", i);
      n.address = "127.0.0.1";
      n.grpc_port = 1000 + i;
      list.push_back(n);
    }
    placement_ = std::make_shared<const Placement>(list);
    RouterOptions o;
    o.replication = replication;
    router_ = *Router::Create([p = placement_] { return p; }, o);
    std::mt19937_64 rng(11);
    keys_.clear();
    for (int i = 0; i < 300; ++i) keys_.push_back(absl::MakeUint128(rng(), rng()));
  }

  std::vector<absl::Status> Write() {
    return ReplicatedWrite(*router_, keys_,
                           [this](const NodeInfo& node, absl::Span<const size_t> idx) {
                             absl::MutexLock lock(&c_.mu);
                             ++c_.calls[node.id];
                             std::vector<absl::Status> out;
                             for (size_t k : idx) {
                               if (c_.down.count(node.id)) {
                                 out.push_back(absl::UnavailableError("down"));
                               } else if (c_.refuse.count(node.id)) {
                                 out.push_back(absl::ResourceExhaustedError("quota"));
                               } else {
                                 c_.data[node.id][keys_[k]] = absl::StrCat("bytes-", k);
                                 out.push_back(absl::OkStatus());
                               }
                             }
                             return out;
                           });
  }

  std::vector<int> Read() {
    return ReadWithFallback(
        *router_, keys_, [this](const NodeInfo& node, absl::Span<const size_t> idx) {
          absl::MutexLock lock(&c_.mu);
          std::vector<ReadOutcome> out;
          for (size_t k : idx) {
            if (c_.down.count(node.id)) {
              out.push_back(ReadOutcome::kUnreachable);
              continue;
            }
            auto it = c_.data[node.id].find(keys_[k]);
            // A hit must carry the right bytes.
            if (it != c_.data[node.id].end()) {
              EXPECT_EQ(it->second, absl::StrCat("bytes-", k));
            }
            out.push_back(it == c_.data[node.id].end() ? ReadOutcome::kMiss : ReadOutcome::kHit);
          }
          return out;
        });
  }

  FakeCluster c_;
  std::shared_ptr<const Placement> placement_;
  std::unique_ptr<Router> router_;
  std::vector<absl::uint128> keys_;
};

TEST_F(ReplicationTest, WriteLandsOnExactlyTheRReplicasWithOneCallPerNode) {
  Make(4, 2);
  for (const absl::Status& st : Write()) ASSERT_TRUE(st.ok()) << st;
  for (size_t k = 0; k < keys_.size(); ++k) {
    std::set<std::string> want;
    for (size_t idx : placement_->Rank(keys_[k], 2)) want.insert(placement_->nodes()[idx].id);
    std::set<std::string> have;
    for (auto& [node, m] : c_.data) {
      if (m.count(keys_[k])) have.insert(node);
    }
    ASSERT_EQ(have, want) << k;
  }
  for (auto& [node, n] : c_.calls) EXPECT_EQ(n, 1) << node;
}

TEST_F(ReplicationTest, WriteIsNotAckedWithoutRCopies) {
  Make(3, 2);
  c_.down.insert("n1");
  std::vector<absl::Status> st = Write();
  int failed = 0;
  for (size_t k = 0; k < keys_.size(); ++k) {
    bool on_n1 = false;
    for (size_t idx : placement_->Rank(keys_[k], 2)) on_n1 |= placement_->nodes()[idx].id == "n1";
    if (on_n1) {
      ++failed;
      EXPECT_TRUE(absl::IsUnavailable(st[k])) << st[k];
      EXPECT_NE(st[k].message().find("n1"), std::string::npos) << st[k];
    } else {
      EXPECT_TRUE(st[k].ok()) << st[k];
    }
  }
  EXPECT_GT(failed, 0);
  EXPECT_TRUE(router_->IsSuspect("n1"));
  // The next write routes around n1 and succeeds everywhere with 2 copies.
  for (const absl::Status& s : Write()) EXPECT_TRUE(s.ok()) << s;
}

TEST_F(ReplicationTest, NodeErrorsAreReportedButDoNotMarkItSuspect) {
  Make(3, 1);
  c_.refuse.insert("n0");
  std::vector<absl::Status> st = Write();
  bool saw = false;
  for (size_t k = 0; k < keys_.size(); ++k) {
    if (placement_->nodes()[placement_->Rank(keys_[k], 1)[0]].id == "n0") {
      EXPECT_TRUE(absl::IsResourceExhausted(st[k])) << st[k];
      saw = true;
    }
  }
  EXPECT_TRUE(saw);
  EXPECT_FALSE(router_->IsSuspect("n0"));
}

TEST_F(ReplicationTest, TooFewNodesFailsEveryKey) {
  Make(1, 2);
  for (const absl::Status& st : Write()) EXPECT_TRUE(absl::IsUnavailable(st)) << st;
  EXPECT_TRUE(c_.data.empty());
}

TEST_F(ReplicationTest, ReadsFallBackToTheSecondReplica) {
  Make(3, 2);
  for (const absl::Status& st : Write()) ASSERT_TRUE(st.ok());
  for (int served : Read()) EXPECT_EQ(served, 0);
  c_.down.insert("n2");
  std::vector<int> served = Read();
  int from_second = 0;
  for (size_t k = 0; k < keys_.size(); ++k) {
    ASSERT_GE(served[k], 0) << "every key has a live replica";
    from_second += served[k] == 1;
  }
  // Reads hit n2 first only until the router suspects it; some keys came from their second copy.
  EXPECT_GT(from_second, 0);
  EXPECT_TRUE(router_->IsSuspect("n2"));
}

TEST_F(ReplicationTest, LostPagesAreMissesNotErrors) {
  Make(3, 1);
  for (const absl::Status& st : Write()) ASSERT_TRUE(st.ok());
  c_.data["n0"].clear();  // n0 restarted empty
  std::vector<int> served = Read();
  for (size_t k = 0; k < keys_.size(); ++k) {
    const bool on_n0 = placement_->nodes()[placement_->Rank(keys_[k], 1)[0]].id == "n0";
    EXPECT_EQ(served[k], on_n0 ? -1 : 0);
  }
}

}  // namespace
}  // namespace pagoda::cluster
