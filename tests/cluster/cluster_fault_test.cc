// Fault tests of a Pagoda cluster with real processes on loopback: one etcd and three pagodad
// nodes, driven through pagoda::ClusterClient. Every loop is bounded by a deadline. The measured
// recovery times are printed as "RESULT name=value" lines (bench/RESULTS.md, "Cluster").
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "kvstore/cluster/testing/etcd_process.h"
#include "pagoda/client/cluster_client.h"
#include "pagoda/cluster/etcd_client.h"
#include "pagodad_process.h"

namespace pagoda {
namespace {

using cluster::testing::EtcdProcess;
using pagoda::testing::PagodadProcess;

constexpr int kLeaseTtlS = 2;
constexpr int kNodes = 3;

// The page layout of the running test (small pages by default; the SSD test uses 64 KiB pages so
// that a small host tier spills to SSD).
PageLayout g_layout = pagoda::testing::SmallLayout();
PageLayout Layout() { return g_layout; }

std::vector<PageKey> MakeKeys(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<PageKey> keys(n);
  for (PageKey& k : keys) k = PageKey{rng(), rng()};
  return keys;
}

std::vector<uint8_t> Bytes(const PageKey& k) {
  return pagoda::testing::PageBytes(k, Layout().PageBytes(), /*seed=*/k.lo ^ 0x5a);
}

void Report(const std::string& name, double value) {
  std::printf("RESULT %s=%.3f\n", name.c_str(), value);
  std::fflush(stdout);
}

// Waits until `pid` is in the stopped state ('T' in /proc/pid/stat), so a measurement starts
// when the node really stopped answering.
bool WaitStopped(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    std::FILE* f = std::fopen(absl::StrCat("/proc/", pid, "/stat").c_str(), "r");
    if (f != nullptr) {
      char buf[512] = {};
      const size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
      std::fclose(f);
      const char* close = std::strrchr(buf, ')');
      if (n > 0 && close != nullptr && close[1] == ' ' && close[2] == 'T') return true;
    }
    absl::SleepFor(absl::Milliseconds(1));
  }
  return false;
}

// What a read pass saw. `wrong` must stay 0 in every test: a served page with other bytes.
struct ReadPass {
  size_t hits = 0;
  size_t misses = 0;
  size_t errors = 0;  // anything but OK / NotFound
  size_t wrong = 0;
};

class ClusterFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    g_layout = pagoda::testing::SmallLayout();
    auto etcd = EtcdProcess::Start();
    ASSERT_TRUE(etcd.ok()) << etcd.status();
    etcd_ = std::move(*etcd);
    for (int i = 0; i < kNodes; ++i) {
      auto node = StartNode(i, "");
      ASSERT_TRUE(node.ok()) << node.status();
      nodes_.push_back(std::move(*node));
    }
  }

  void TearDown() override {
    nodes_.clear();
    for (const std::string& dir : kept_dirs_) cluster::testing::RemoveTree(dir);
  }

  // Keeps node i's data dir across its stop (for a restart); TearDown removes it.
  std::string KeepDir(int i) {
    nodes_[i]->KeepDataDir();
    kept_dirs_.push_back(nodes_[i]->data_dir());
    return nodes_[i]->data_dir();
  }

  static std::string NodeId(int i) { return absl::StrCat("node-", i); }

  absl::StatusOr<std::unique_ptr<PagodadProcess>> StartNode(int i, const std::string& data_dir) {
    PagodadProcess::Options o;
    o.config_yaml = config_yaml_ + absl::StrCat("cluster: {lease_ttl_s: ", kLeaseTtlS, "}\n");
    o.extra_args = {"--etcd", etcd_->endpoint(), "--node-id", NodeId(i)};
    o.data_dir = data_dir;
    return PagodadProcess::Start(o);
  }

  // `local_node` (if any) is reached through its zero-copy path, the others over gRPC.
  std::unique_ptr<ClusterClient> Connect(int replication, const std::string& local_node = "") {
    ClusterClientOptions o;
    o.etcd_endpoints = {etcd_->endpoint()};
    o.replication = replication;
    o.local_node_id = local_node;
    o.node.data_path = local_node.empty() ? DataPathKind::kRemote : DataPathKind::kLocal;
    o.node.tenant = "fault";
    o.node_timeout = absl::Milliseconds(800);
    o.suspect_for = absl::Seconds(2);
    auto c = ClusterClient::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }

  static bool WaitLive(ClusterClient& c, size_t n, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      if (c.LiveNodes().size() == n) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }

  static std::vector<absl::Status> PutAll(ClusterClient& c, absl::Span<const PageKey> keys) {
    std::vector<std::vector<uint8_t>> bytes;
    std::vector<PutPage> pages;
    bytes.reserve(keys.size());
    for (const PageKey& k : keys) bytes.push_back(Bytes(k));
    for (size_t i = 0; i < keys.size(); ++i) pages.push_back({keys[i], Layout().Id(), bytes[i]});
    return c.Put(pages);
  }

  static ReadPass ReadAll(ClusterClient& c, absl::Span<const PageKey> keys) {
    const size_t size = Layout().PageBytes();
    std::vector<uint8_t> buf(keys.size() * size);
    std::vector<GetPage> gets;
    for (size_t i = 0; i < keys.size(); ++i) {
      gets.push_back({keys[i], absl::Span<uint8_t>(buf.data() + i * size, size)});
    }
    std::vector<GetResult> got = c.Get(gets);
    ReadPass pass;
    for (size_t i = 0; i < keys.size(); ++i) {
      if (got[i].status.ok()) {
        ++pass.hits;
        const std::vector<uint8_t> want = Bytes(keys[i]);
        if (got[i].size != size || std::memcmp(want.data(), buf.data() + i * size, size) != 0) {
          ++pass.wrong;
        }
      } else if (absl::IsNotFound(got[i].status)) {
        ++pass.misses;
      } else {
        ++pass.errors;
      }
    }
    return pass;
  }

  // Index of the node that is the first replica of the most keys (so a fault there matters).
  int BusiestNode(ClusterClient& c, absl::Span<const PageKey> keys) {
    std::map<std::string, int> count;
    for (const PageKey& k : keys) ++count[c.ReplicasOf(k).at(0)];
    int best = 0;
    for (int i = 0; i < kNodes; ++i) {
      if (count[NodeId(i)] > count[NodeId(best)]) best = i;
    }
    return best;
  }

  std::string config_yaml_ = pagoda::testing::TestConfigYaml();
  std::vector<std::string> kept_dirs_;
  std::unique_ptr<EtcdProcess> etcd_;
  std::vector<std::unique_ptr<PagodadProcess>> nodes_;
};

// Readers and a writer run while a node is killed with SIGKILL. With R=2 every acknowledged page
// keeps a live copy, so every read must hit, with the right bytes, during and after the fault.
TEST_F(ClusterFaultTest, KillNineUnderLoadNeverServesWrongBytes) {
  auto client = Connect(/*replication=*/2);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(WaitLive(*client, kNodes, absl::Seconds(10)));
  const std::vector<PageKey> keys = MakeKeys(600, 1);
  for (const absl::Status& s : PutAll(*client, keys)) ASSERT_TRUE(s.ok()) << s;
  ASSERT_EQ(ReadAll(*client, keys).hits, keys.size());

  std::atomic<bool> stop{false};
  std::atomic<size_t> wrong{0}, misses{0}, errors{0}, reads{0};
  absl::Mutex mu;
  std::vector<PageKey> acked;  // pages the writer got acknowledged during the run
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(100 + t);
      while (!stop.load()) {
        std::vector<PageKey> batch;
        for (int i = 0; i < 32; ++i) batch.push_back(keys[rng() % keys.size()]);
        ReadPass p = ReadAll(*client, batch);
        wrong += p.wrong;
        misses += p.misses;
        errors += p.errors;
        reads += batch.size();
      }
    });
  }
  threads.emplace_back([&] {
    uint64_t seed = 1000;
    while (!stop.load()) {
      std::vector<PageKey> batch = MakeKeys(16, seed++);
      std::vector<absl::Status> st = PutAll(*client, batch);
      absl::MutexLock l(&mu);
      for (size_t i = 0; i < batch.size(); ++i) {
        if (st[i].ok()) acked.push_back(batch[i]);
      }
    }
  });

  absl::SleepFor(absl::Milliseconds(500));
  const int victim = BusiestNode(*client, keys);
  const absl::Time killed = absl::Now();
  ASSERT_TRUE(nodes_[victim]->Stop(SIGKILL).ok());

  // Recovered: a fresh batch of puts is fully acknowledged (two copies on the survivors) and a
  // full read pass hits everything. Bounded by the lease TTL plus slack.
  absl::Duration recovery = absl::InfiniteDuration();
  uint64_t seed = 50000;
  while (absl::Now() - killed < absl::Seconds(kLeaseTtlS + 8)) {
    std::vector<PageKey> probe = MakeKeys(32, seed++);
    bool all_ok = true;
    for (const absl::Status& s : PutAll(*client, probe)) all_ok &= s.ok();
    if (all_ok && ReadAll(*client, keys).hits == keys.size()) {
      recovery = absl::Now() - killed;
      break;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  const bool dropped = WaitLive(*client, kNodes - 1, absl::Seconds(kLeaseTtlS + 5));
  const absl::Duration drop_time = absl::Now() - killed;
  absl::SleepFor(absl::Milliseconds(300));  // keep the load running past the membership change
  stop = true;
  for (std::thread& t : threads) t.join();

  EXPECT_EQ(wrong.load(), 0u);
  EXPECT_EQ(misses.load(), 0u) << "R=2: every acknowledged page has a live copy";
  EXPECT_EQ(errors.load(), 0u);
  EXPECT_GT(reads.load(), 0u);
  ASSERT_LT(recovery, absl::Seconds(kLeaseTtlS + 8)) << "no recovery";
  EXPECT_TRUE(dropped);
  // Every page acknowledged during the run (two copies) is still readable.
  ReadPass after = ReadAll(*client, acked);
  EXPECT_EQ(after.wrong, 0u);
  EXPECT_EQ(after.hits, acked.size());
  const ClusterReadStats rs = client->read_stats();
  EXPECT_GT(rs.replica_hits + rs.primary_hits, 0u);
  Report("kill9_r2_recovery_ms", absl::ToDoubleMilliseconds(recovery));
  Report("kill9_membership_drop_ms", absl::ToDoubleMilliseconds(drop_time));
  // Baseline measured in the same run: how long etcd alone takes to drop the dead node.
  Report("kill9_r2_recovery_over_membership_drop", absl::FDivDuration(recovery, drop_time));
  Report("kill9_r2_reads_during_fault", static_cast<double>(reads.load()));
  Report("kill9_r2_replica_hits", static_cast<double>(rs.replica_hits));
}

// With R=1 a killed node's pages are lost: reads of them are misses, never errors or wrong
// bytes; writes route to the survivors at once.
TEST_F(ClusterFaultTest, KillNineWithoutReplicasTurnsItsPagesIntoMisses) {
  auto client = Connect(/*replication=*/1);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(WaitLive(*client, kNodes, absl::Seconds(10)));
  const std::vector<PageKey> keys = MakeKeys(600, 2);
  for (const absl::Status& s : PutAll(*client, keys)) ASSERT_TRUE(s.ok()) << s;
  const int victim = BusiestNode(*client, keys);
  size_t on_victim = 0;
  for (const PageKey& k : keys) on_victim += client->ReplicasOf(k)[0] == NodeId(victim);
  const absl::Time killed = absl::Now();
  ASSERT_TRUE(nodes_[victim]->Stop(SIGKILL).ok());

  absl::Duration recovery = absl::InfiniteDuration();
  uint64_t seed = 70000;
  while (absl::Now() - killed < absl::Seconds(10)) {
    ReadPass p = ReadAll(*client, keys);
    ASSERT_EQ(p.wrong, 0u);
    ASSERT_EQ(p.errors, 0u) << "a lost page is a miss";
    ASSERT_EQ(p.hits, keys.size() - p.misses);
    bool all_ok = true;
    for (const absl::Status& s : PutAll(*client, MakeKeys(32, seed++))) all_ok &= s.ok();
    if (all_ok && p.misses == on_victim) {
      recovery = absl::Now() - killed;
      break;
    }
  }
  ASSERT_LT(recovery, absl::Seconds(10));
  Report("kill9_r1_recovery_ms", absl::ToDoubleMilliseconds(recovery));
}

// A node stopped gracefully and started again on its data dir serves its pages again (they were
// flushed to its SSD tier); killed with SIGKILL after that, it serves only what was still on SSD
// (reads promoted the pages back to memory), never wrong bytes. ClusterSsdFaultTest checks that
// pages on SSD do come back after a kill -9.
TEST_F(ClusterFaultTest, RestartedNodeServesItsSsdPagesAgain) {
  auto client = Connect(/*replication=*/1);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(WaitLive(*client, kNodes, absl::Seconds(10)));
  const std::vector<PageKey> keys = MakeKeys(600, 3);
  for (const absl::Status& s : PutAll(*client, keys)) ASSERT_TRUE(s.ok()) << s;
  const int victim = BusiestNode(*client, keys);
  std::vector<PageKey> mine;
  for (const PageKey& k : keys) {
    if (client->ReplicasOf(k)[0] == NodeId(victim)) mine.push_back(k);
  }
  ASSERT_FALSE(mine.empty());

  const std::string dir = KeepDir(victim);
  auto code = nodes_[victim]->Stop(SIGTERM);
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0);
  ASSERT_TRUE(WaitLive(*client, kNodes - 1, absl::Seconds(5)));  // it left at once
  ReadPass gone = ReadAll(*client, mine);
  EXPECT_EQ(gone.hits, 0u);
  EXPECT_EQ(gone.wrong, 0u);

  const absl::Time restarted = absl::Now();
  auto back = StartNode(victim, dir);
  ASSERT_TRUE(back.ok()) << back.status();
  nodes_[victim] = std::move(*back);
  ASSERT_TRUE(WaitLive(*client, kNodes, absl::Seconds(10)));
  // The client may still route around the node it saw fail; wait that out (bounded).
  ReadPass again;
  while (absl::Now() - restarted < absl::Seconds(10)) {
    again = ReadAll(*client, mine);
    ASSERT_EQ(again.wrong, 0u);
    if (again.hits == mine.size()) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(again.hits, mine.size());
  Report("graceful_restart_serving_again_ms", absl::ToDoubleMilliseconds(absl::Now() - restarted));

  // kill -9, restart on the same data: pages served must be exactly right; some may be lost.
  KeepDir(victim);
  ASSERT_TRUE(nodes_[victim]->Stop(SIGKILL).ok());
  auto again_back = StartNode(victim, dir);
  ASSERT_TRUE(again_back.ok()) << again_back.status();
  nodes_[victim] = std::move(*again_back);
  ASSERT_TRUE(WaitLive(*client, kNodes, absl::Seconds(10)));
  absl::SleepFor(absl::Seconds(2));  // past the client's suspicion of the killed node
  ReadPass after_kill = ReadAll(*client, mine);
  EXPECT_EQ(after_kill.wrong, 0u);
  EXPECT_EQ(after_kill.errors, 0u);
}

// etcd restarts empty (data lost): every node registers again, clients see the full cluster
// again, and reads keep hitting meanwhile (the client keeps its last view of the nodes).
TEST_F(ClusterFaultTest, EtcdRestartNodesReRegister) {
  auto client = Connect(/*replication=*/1);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(WaitLive(*client, kNodes, absl::Seconds(10)));
  const std::vector<PageKey> keys = MakeKeys(300, 4);
  for (const absl::Status& s : PutAll(*client, keys)) ASSERT_TRUE(s.ok()) << s;

  etcd_->Kill();
  ASSERT_TRUE(etcd_->WipeData().ok());
  ReadPass during = ReadAll(*client, keys);
  EXPECT_EQ(during.hits, keys.size()) << "etcd down must not stop reads";
  EXPECT_EQ(during.wrong, 0u);
  const absl::Time restarted = absl::Now();
  ASSERT_TRUE(etcd_->Restart().ok());
  // The watcher re-lists an empty etcd first, then sees the nodes come back.
  bool all_back = false;
  cluster::EtcdOptions eo;
  eo.endpoints = {etcd_->endpoint()};
  auto etcd_view = cluster::EtcdClient::Create(eo);
  ASSERT_TRUE(etcd_view.ok());
  while (absl::Now() - restarted < absl::Seconds(15)) {
    auto listed = (*etcd_view)->GetPrefix("/pagoda/v1/nodes/");
    if (listed.ok() && listed->kvs.size() == kNodes && client->LiveNodes().size() == kNodes) {
      all_back = true;
      break;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(all_back);
  Report("etcd_restart_reregister_ms", absl::ToDoubleMilliseconds(absl::Now() - restarted));
  ReadPass after = ReadAll(*client, keys);
  EXPECT_EQ(after.hits, keys.size());
  EXPECT_EQ(after.wrong, 0u);
}

// A node that stops answering (SIGSTOP: its sockets accept but nothing replies, like a network
// partition) is routed around: writes succeed again within a bounded time, reads of its pages
// are misses, not hangs; it drops out once its lease expires and is used again after SIGCONT.
TEST_F(ClusterFaultTest, PartitionedNodeIsRoutedAround) {
  auto client = Connect(/*replication=*/1);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(WaitLive(*client, kNodes, absl::Seconds(10)));
  const std::vector<PageKey> keys = MakeKeys(300, 5);
  for (const absl::Status& s : PutAll(*client, keys)) ASSERT_TRUE(s.ok()) << s;
  const int victim = BusiestNode(*client, keys);
  const pid_t pid = nodes_[victim]->pid();
  ASSERT_EQ(kill(pid, SIGSTOP), 0);
  ASSERT_TRUE(WaitStopped(pid, absl::Seconds(5)));
  const absl::Time cut = absl::Now();

  absl::Duration recovery = absl::InfiniteDuration();
  uint64_t seed = 90000;
  while (absl::Now() - cut < absl::Seconds(10)) {
    bool all_ok = true;
    for (const absl::Status& s : PutAll(*client, MakeKeys(32, seed++))) all_ok &= s.ok();
    if (all_ok) {
      recovery = absl::Now() - cut;
      break;
    }
  }
  ReadPass during = ReadAll(*client, keys);
  EXPECT_EQ(during.wrong, 0u);
  EXPECT_EQ(during.errors, 0u);
  EXPECT_GT(during.misses, 0u);
  const bool dropped = WaitLive(*client, kNodes - 1, absl::Seconds(kLeaseTtlS + 5));
  ASSERT_EQ(kill(pid, SIGCONT), 0);
  ASSERT_LT(recovery, absl::Seconds(10));
  EXPECT_TRUE(dropped);
  Report("partition_route_around_ms", absl::ToDoubleMilliseconds(recovery));

  // Healed: the node re-registers (its lease expired) and its pages are served again.
  ASSERT_TRUE(WaitLive(*client, kNodes, absl::Seconds(10)));
  ReadPass healed;
  const absl::Time t0 = absl::Now();
  while (absl::Now() - t0 < absl::Seconds(10)) {
    healed = ReadAll(*client, keys);
    ASSERT_EQ(healed.wrong, 0u);
    if (healed.hits == keys.size()) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(healed.hits, keys.size());
}

}  // namespace
}  // namespace pagoda

namespace pagoda {
namespace {

// Nodes with an 8 MiB host tier (128 pages of 64 KiB) and synced SSD writes: most of a node's
// pages spill to its SSD tier, and survive a kill -9 there.
class ClusterSsdFaultTest : public ClusterFaultTest {
 protected:
  void SetUp() override {
    config_yaml_ = R"(
server: {grpc_host: 127.0.0.1, grpc_port: 0, http_host: 127.0.0.1, http_port: 0}
store:
  host_bytes: 8MiB
  ssd_bytes: 256MiB
  ssd_sync_writes: true  # every demotion batch synced before it counts (not only at checkpoints)
  layouts:
    - {dtype: fp16, kv_heads: 8, head_dim: 128, page_tokens: 16}
logging: {level: info}
)";
    ClusterFaultTest::SetUp();
    g_layout = PageLayout{DType::kFp16, 8, 128, 16};
  }
};

TEST_F(ClusterSsdFaultTest, KilledNodeServesItsSsdPagesAfterRestart) {
  auto client = Connect(/*replication=*/1);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(WaitLive(*client, kNodes, absl::Seconds(10)));
  const std::vector<PageKey> keys = MakeKeys(900, 6);
  for (size_t i = 0; i < keys.size(); i += 100) {
    for (const absl::Status& s : PutAll(*client, absl::Span<const PageKey>(keys).subspan(i, 100))) {
      ASSERT_TRUE(s.ok()) << s;
    }
  }
  const int victim = BusiestNode(*client, keys);
  std::vector<PageKey> mine;
  for (const PageKey& k : keys) {
    if (client->ReplicasOf(k)[0] == NodeId(victim)) mine.push_back(k);
  }
  const size_t host_pages = (8u << 20) / Layout().PageBytes();
  ASSERT_GT(mine.size(), host_pages + 50) << "the victim must hold more than its host tier";
  auto tiers = [&] {
    std::string out;
    auto st = client->Stats();
    if (st.ok()) {
      for (const TierUsage& t : st->tiers) out += absl::StrCat(t.name, "=", t.pages, " ");
    }
    return out;
  };
  const std::string dir = KeepDir(victim);
  ASSERT_TRUE(nodes_[victim]->Stop(SIGKILL).ok());  // no flush: only what was on SSD survives

  const absl::Time killed = absl::Now();
  auto back = StartNode(victim, dir);
  ASSERT_TRUE(back.ok()) << back.status();
  nodes_[victim] = std::move(*back);
  ASSERT_TRUE(WaitLive(*client, kNodes, absl::Seconds(10)));
  ReadPass after;
  while (absl::Now() - killed < absl::Seconds(15)) {
    after = ReadAll(*client, mine);
    ASSERT_EQ(after.wrong, 0u);
    ASSERT_EQ(after.errors, 0u);
    if (after.hits + host_pages >= mine.size()) break;  // all but (at most) the host tier's
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_GE(after.hits + host_pages, mine.size()) << tiers();
  Report("kill9_ssd_restart_serving_ms", absl::ToDoubleMilliseconds(absl::Now() - killed));
  Report("kill9_ssd_restart_pages_served_pct", 100.0 * after.hits / mine.size());
}

}  // namespace
}  // namespace pagoda

namespace pagoda {
namespace {

using cluster::testing::Subprocess;

int Sh(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()); }

// A real network partition: node-2 runs in its own network namespace, reached through a veth
// pair; taking the link down cuts it off from the clients and from etcd alike. Needs root and
// `ip netns` (skipped otherwise; the SIGSTOP test above covers the route-around then).
class ClusterNetnsTest : public ClusterFaultTest {
 protected:
  void SetUp() override {
    g_layout = pagoda::testing::SmallLayout();
    const int tag = static_cast<int>(getpid() % 200) + 20;
    ns_ = absl::StrCat("pgfault", getpid());
    host_if_ = absl::StrCat("pgh", getpid() % 1000000);
    ns_if_ = absl::StrCat("pgn", getpid() % 1000000);
    host_ip_ = absl::StrCat("10.233.", tag, ".1");
    ns_ip_ = absl::StrCat("10.233.", tag, ".2");
    if (geteuid() != 0 || Sh("ip netns add " + ns_) != 0) {
      GTEST_SKIP() << "network namespaces need root and iproute2";
    }
    have_ns_ = true;
    ASSERT_EQ(Sh(absl::StrCat("ip link add ", host_if_, " type veth peer name ", ns_if_)), 0);
    ASSERT_EQ(Sh(absl::StrCat("ip link set ", ns_if_, " netns ", ns_)), 0);
    ASSERT_EQ(Sh(absl::StrCat("ip addr add ", host_ip_, "/30 dev ", host_if_)), 0);
    ASSERT_EQ(Sh(absl::StrCat("ip link set ", host_if_, " up")), 0);
    const std::string in_ns = "ip netns exec " + ns_ + " ";
    ASSERT_EQ(Sh(in_ns + absl::StrCat("ip addr add ", ns_ip_, "/30 dev ", ns_if_)), 0);
    ASSERT_EQ(Sh(in_ns + absl::StrCat("ip link set ", ns_if_, " up")), 0);
    ASSERT_EQ(Sh(in_ns + "ip link set lo up"), 0);

    auto etcd = EtcdProcess::Start(host_ip_);
    ASSERT_TRUE(etcd.ok()) << etcd.status();
    etcd_ = std::move(*etcd);
    for (int i = 0; i < kNodes - 1; ++i) {
      auto node = StartNode(i, "");
      ASSERT_TRUE(node.ok()) << node.status();
      nodes_.push_back(std::move(*node));
    }
    auto dir = cluster::testing::MakeTempDir("pgns");
    ASSERT_TRUE(dir.ok());
    ns_dir_ = *dir;
    {
      std::FILE* f = std::fopen((ns_dir_ + "/config.yaml").c_str(), "w");
      ASSERT_NE(f, nullptr);
      const std::string yaml =
          config_yaml_ + absl::StrCat("cluster: {lease_ttl_s: ", kLeaseTtlS, "}\n");
      std::fwrite(yaml.data(), 1, yaml.size(), f);
      std::fclose(f);
    }
    auto proc = Subprocess::Start({"ip",
                                   "netns",
                                   "exec",
                                   ns_,
                                   PAGODAD_BIN,
                                   "--config",
                                   ns_dir_ + "/config.yaml",
                                   "--data-dir",
                                   ns_dir_,
                                   "--port-file",
                                   ns_dir_ + "/ports.json",
                                   "--grpc-host",
                                   ns_ip_,
                                   "--grpc-port",
                                   "0",
                                   "--http-port",
                                   "0",
                                   "--local-socket",
                                   "off",
                                   "--etcd",
                                   absl::StrCat(host_ip_, ":", etcd_->client_port()),
                                   "--node-id",
                                   NodeId(kNodes - 1),
                                   "--advertise-address",
                                   ns_ip_},
                                  ns_dir_ + "/pagodad.log");
    ASSERT_TRUE(proc.ok()) << proc.status();
    ns_node_ = std::move(*proc);
  }

  void TearDown() override {
    ns_node_.reset();                         // SIGKILL
    if (have_ns_) Sh("ip netns del " + ns_);  // removes the veth pair too
    if (!ns_dir_.empty()) cluster::testing::RemoveTree(ns_dir_);
    ClusterFaultTest::TearDown();
  }

  bool have_ns_ = false;
  std::string ns_, host_if_, ns_if_, host_ip_, ns_ip_, ns_dir_;
  std::unique_ptr<Subprocess> ns_node_;
};

TEST_F(ClusterNetnsTest, PartitionedNodeIsRoutedAroundAndRejoins) {
  auto client = Connect(/*replication=*/1);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(WaitLive(*client, kNodes, absl::Seconds(15)));
  const std::vector<PageKey> keys = MakeKeys(300, 7);
  for (const absl::Status& s : PutAll(*client, keys)) ASSERT_TRUE(s.ok()) << s;
  std::vector<PageKey> cut_off;
  for (const PageKey& k : keys) {
    if (client->ReplicasOf(k)[0] == NodeId(kNodes - 1)) cut_off.push_back(k);
  }
  ASSERT_FALSE(cut_off.empty());

  const absl::Time cut = absl::Now();
  ASSERT_EQ(Sh(absl::StrCat("ip link set ", host_if_, " down")), 0);
  absl::Duration recovery = absl::InfiniteDuration();
  uint64_t seed = 110000;
  while (absl::Now() - cut < absl::Seconds(10)) {
    bool all_ok = true;
    for (const absl::Status& s : PutAll(*client, MakeKeys(32, seed++))) all_ok &= s.ok();
    if (all_ok) {
      recovery = absl::Now() - cut;
      break;
    }
  }
  ASSERT_LT(recovery, absl::Seconds(10));
  ReadPass during = ReadAll(*client, keys);
  EXPECT_EQ(during.wrong, 0u);
  EXPECT_EQ(during.errors, 0u);
  EXPECT_EQ(during.misses, cut_off.size());
  // Cut off from etcd too, the node's lease runs out and it leaves the membership.
  EXPECT_TRUE(WaitLive(*client, kNodes - 1, absl::Seconds(kLeaseTtlS + 5)));
  Report("netns_partition_route_around_ms", absl::ToDoubleMilliseconds(recovery));

  const absl::Time healed = absl::Now();
  ASSERT_EQ(Sh(absl::StrCat("ip link set ", host_if_, " up")), 0);
  ASSERT_TRUE(WaitLive(*client, kNodes, absl::Seconds(15))) << "the node must register again";
  ReadPass after;
  while (absl::Now() - healed < absl::Seconds(15)) {
    after = ReadAll(*client, cut_off);
    ASSERT_EQ(after.wrong, 0u);
    if (after.hits == cut_off.size()) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(after.hits, cut_off.size()) << "its pages (still in its memory) serve again";
  Report("netns_heal_serving_again_ms", absl::ToDoubleMilliseconds(absl::Now() - healed));
}

}  // namespace
}  // namespace pagoda

namespace pagoda {
namespace {

// ClusterClient's contract on a healthy 3-node cluster: bad options, R copies or nothing,
// immutable pages, prefix lookups and removal across nodes.
TEST_F(ClusterFaultTest, ClusterClientContract) {
  ClusterClientOptions bad;
  EXPECT_TRUE(absl::IsInvalidArgument(ClusterClient::Connect(bad).status()));
  bad.etcd_endpoints = {etcd_->endpoint()};
  bad.replication = 0;
  EXPECT_TRUE(absl::IsInvalidArgument(ClusterClient::Connect(bad).status()));
  bad.replication = 1;
  bad.node_timeout = absl::ZeroDuration();
  EXPECT_TRUE(absl::IsInvalidArgument(ClusterClient::Connect(bad).status()));

  // node-0 through its zero-copy path (kLocal fails rather than fall back), the rest over gRPC.
  auto r2 = Connect(/*replication=*/2, /*local_node=*/NodeId(0));
  ASSERT_NE(r2, nullptr);
  ASSERT_TRUE(WaitLive(*r2, kNodes, absl::Seconds(10)));
  EXPECT_EQ(r2->LiveNodes().size(), static_cast<size_t>(kNodes));

  // More copies than nodes: refused, and nothing is stored anywhere.
  auto r4 = Connect(/*replication=*/4);
  ASSERT_NE(r4, nullptr);
  ASSERT_TRUE(WaitLive(*r4, kNodes, absl::Seconds(10)));
  const std::vector<PageKey> refused = MakeKeys(20, 8);
  for (const absl::Status& s : PutAll(*r4, refused)) EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  auto exists = r2->Exists(refused);
  ASSERT_TRUE(exists.ok());
  for (bool e : *exists) EXPECT_FALSE(e);

  // Two copies land on the two ranked nodes; writing the same page again is AlreadyExists.
  const std::vector<PageKey> keys = MakeKeys(40, 9);
  for (const absl::Status& s : PutAll(*r2, keys)) ASSERT_TRUE(s.ok()) << s;
  for (const absl::Status& s : PutAll(*r2, keys)) EXPECT_TRUE(absl::IsAlreadyExists(s)) << s;
  auto stats = r2->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->pages, 2 * keys.size());
  ReadPass pass = ReadAll(*r2, keys);
  EXPECT_EQ(pass.hits, keys.size());
  EXPECT_EQ(pass.wrong, 0u);

  // LongestPrefix over a chain spread across nodes: stops at the first page not stored.
  std::vector<PageKey> chain = MakeKeys(10, 10);
  std::vector<PageKey> stored = chain;
  stored.erase(stored.begin() + 6);
  for (const absl::Status& s : PutAll(*r2, stored)) ASSERT_TRUE(s.ok()) << s;
  auto prefix = r2->LongestPrefix(chain);
  ASSERT_TRUE(prefix.ok()) << prefix.status();
  EXPECT_EQ(*prefix, 6u);

  // Remove takes every copy; a second Remove is NotFound.
  for (const absl::Status& s : r2->Remove(keys)) EXPECT_TRUE(s.ok()) << s;
  for (const absl::Status& s : r2->Remove(keys)) EXPECT_TRUE(absl::IsNotFound(s)) << s;
  pass = ReadAll(*r2, keys);
  EXPECT_EQ(pass.hits, 0u);
  EXPECT_EQ(pass.misses, keys.size());
}

}  // namespace
}  // namespace pagoda
