#include "pagoda/client/cluster_client.h"

#include <deque>
#include <map>
#include <thread>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/numeric/int128.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "pagoda/cluster/etcd_client.h"
#include "pagoda/cluster/membership.h"
#include "pagoda/cluster/replication.h"
#include "pagoda/cluster/router.h"

namespace pagoda {
namespace {

using cluster::IsUnreachable;
using cluster::NodeInfo;
using cluster::ReadOutcome;

absl::uint128 RouteKey(const PageKey& k) { return absl::MakeUint128(k.hi, k.lo); }

// Threads for the *Async calls (the per-node clients have their own).
class AsyncPool {
 public:
  explicit AsyncPool(int threads) {
    for (int i = 0; i < std::max(1, threads); ++i) threads_.emplace_back([this] { Run(); });
  }
  ~AsyncPool() {
    {
      absl::MutexLock l(&mu_);
      stop_ = true;
    }
    for (std::thread& t : threads_) t.join();
  }
  void Submit(std::function<void()> f) {
    absl::MutexLock l(&mu_);
    tasks_.push_back(std::move(f));
  }

 private:
  void Run() {
    while (true) {
      std::function<void()> f;
      {
        absl::MutexLock l(&mu_);
        auto ready = [this]()
                         ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || !tasks_.empty(); };
        mu_.Await(absl::Condition(&ready));
        if (tasks_.empty()) return;
        f = std::move(tasks_.front());
        tasks_.pop_front();
      }
      f();
    }
  }
  absl::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

// Merges the answers of several replicas to one per-key status: OK when any replica said OK,
// NotFound when all said NotFound, else the first other error.
absl::Status MergeReplicaStatus(const std::vector<absl::Status>& answers) {
  if (answers.empty()) return absl::UnavailableError("cluster: no live node for this key");
  const absl::Status* other = nullptr;
  for (const absl::Status& s : answers) {
    if (s.ok()) return s;
    if (!absl::IsNotFound(s) && other == nullptr) other = &s;
  }
  return other != nullptr ? *other : answers.front();
}

class ClusterClientImpl final : public ClusterClient {
 public:
  explicit ClusterClientImpl(const ClusterClientOptions& o) : options_(o) {}
  ~ClusterClientImpl() override { pool_.reset(); }

  absl::Status Init() {
    if (options_.etcd_endpoints.empty()) {
      return absl::InvalidArgumentError("cluster client: no etcd endpoints");
    }
    if (options_.node_timeout <= absl::ZeroDuration()) {
      return absl::InvalidArgumentError("cluster client: node_timeout must be positive");
    }
    cluster::EtcdOptions eo;
    eo.endpoints = options_.etcd_endpoints;
    eo.tls_ca_file = options_.etcd_ca_file;
    eo.tls_cert_file = options_.etcd_cert_file;
    eo.tls_key_file = options_.etcd_key_file;
    absl::StatusOr<std::unique_ptr<cluster::EtcdClient>> etcd = cluster::EtcdClient::Create(eo);
    if (!etcd.ok()) return etcd.status();
    etcd_ = std::move(*etcd);
    cluster::RouterOptions ro;
    ro.replication = options_.replication;
    ro.suspect_for = options_.suspect_for;
    cluster::MembershipOptions mo;
    mo.prefix = options_.prefix;
    absl::StatusOr<std::unique_ptr<cluster::Membership>> m =
        cluster::Membership::Start(etcd_.get(), mo);
    if (!m.ok()) return m.status();
    membership_ = std::move(*m);
    absl::StatusOr<std::unique_ptr<cluster::Router>> r =
        cluster::Router::Create([m = membership_.get()] { return m->placement(); }, ro);
    if (!r.ok()) return r.status();
    router_ = std::move(*r);
    pool_ = std::make_unique<AsyncPool>(options_.node.async_threads);
    return absl::OkStatus();
  }

  std::string data_path() const override { return "cluster"; }

  std::vector<std::string> LiveNodes() const override {
    std::vector<std::string> ids;
    const std::shared_ptr<const cluster::Placement> placement = membership_->placement();
    for (const NodeInfo& n : placement->nodes()) ids.push_back(n.id);
    return ids;
  }

  std::vector<std::string> ReplicasOf(const PageKey& key) const override {
    std::vector<std::string> ids;
    for (const NodeInfo& n : router_->Route(RouteKey(key))) ids.push_back(n.id);
    return ids;
  }

  ClusterReadStats read_stats() const override {
    ClusterReadStats s;
    s.primary_hits = primary_hits_.load();
    s.replica_hits = replica_hits_.load();
    s.misses = misses_.load();
    s.unreachable = unreachable_.load();
    return s;
  }

  std::vector<absl::Status> Put(absl::Span<const PutPage> pages) override {
    std::vector<absl::uint128> keys = Keys(pages);
    // Pages are immutable: a replica that already holds the key counts as a committed copy; the
    // caller sees AlreadyExists only when every replica had it.
    std::vector<std::atomic<int>> fresh(pages.size());
    std::vector<absl::Status> out = cluster::ReplicatedWrite(
        *router_, keys, [&](const NodeInfo& node, absl::Span<const size_t> idx) {
          std::vector<absl::Status> st(idx.size());
          absl::StatusOr<std::shared_ptr<Client>> c = NodeClient(node);
          if (!c.ok()) {
            st.assign(idx.size(), c.status());
            return st;
          }
          std::vector<PutPage> sub;
          sub.reserve(idx.size());
          for (size_t k : idx) sub.push_back(pages[k]);
          std::vector<absl::Status> got = (*c)->Put(sub);
          for (size_t j = 0; j < idx.size() && j < got.size(); ++j) {
            if (got[j].ok()) {
              fresh[idx[j]].fetch_add(1);
            } else if (absl::IsAlreadyExists(got[j])) {
              got[j] = absl::OkStatus();
            }
          }
          NoteReachability(node, got);
          return got;
        });
    for (size_t k = 0; k < out.size(); ++k) {
      if (out[k].ok() && fresh[k].load() == 0) {
        out[k] = absl::AlreadyExistsError("page already stored on every replica");
      }
    }
    return out;
  }

  std::vector<GetResult> Get(absl::Span<const GetPage> pages) override {
    std::vector<absl::uint128> keys(pages.size());
    for (size_t i = 0; i < pages.size(); ++i) keys[i] = RouteKey(pages[i].key);
    std::vector<GetResult> results(pages.size());
    // The first error that is neither a miss nor "unreachable" (e.g. a too-small buffer) is
    // what the caller sees when no replica serves the page.
    std::vector<absl::Status> answer(pages.size(), absl::NotFoundError("page not stored"));
    std::vector<int> served = cluster::ReadWithFallback(
        *router_, keys, [&](const NodeInfo& node, absl::Span<const size_t> idx) {
          std::vector<ReadOutcome> o(idx.size(), ReadOutcome::kUnreachable);
          absl::StatusOr<std::shared_ptr<Client>> c = NodeClient(node);
          if (!c.ok()) {
            unreachable_.fetch_add(1);
            return o;
          }
          std::vector<GetPage> sub;
          sub.reserve(idx.size());
          for (size_t k : idx) sub.push_back(pages[k]);
          std::vector<GetResult> got = (*c)->Get(sub);
          std::vector<absl::Status> statuses;
          for (size_t j = 0; j < idx.size() && j < got.size(); ++j) {
            statuses.push_back(got[j].status);
            const absl::Status& s = got[j].status;
            if (s.ok()) {
              results[idx[j]] = got[j];
              o[j] = ReadOutcome::kHit;
            } else if (IsUnreachable(s)) {
              o[j] = ReadOutcome::kUnreachable;
            } else {
              // NotFound, or DataLoss (bytes failed their checksum twice): never served; try
              // the next replica.
              o[j] = ReadOutcome::kMiss;
              if (!absl::IsNotFound(s) && !absl::IsDataLoss(s) &&
                  absl::IsNotFound(answer[idx[j]])) {
                answer[idx[j]] = s;
              }
            }
          }
          NoteReachability(node, statuses);
          return o;
        });
    for (size_t k = 0; k < pages.size(); ++k) {
      if (served[k] == 0) {
        primary_hits_.fetch_add(1);
      } else if (served[k] > 0) {
        replica_hits_.fetch_add(1);
      } else {
        misses_.fetch_add(1);
        results[k] = GetResult{answer[k], 0, 0};
      }
    }
    return results;
  }

  absl::StatusOr<std::vector<bool>> Exists(absl::Span<const PageKey> keys) override {
    std::vector<absl::uint128> route(keys.size());
    for (size_t i = 0; i < keys.size(); ++i) route[i] = RouteKey(keys[i]);
    std::vector<int> found = cluster::ReadWithFallback(
        *router_, route, [&](const NodeInfo& node, absl::Span<const size_t> idx) {
          std::vector<ReadOutcome> o(idx.size(), ReadOutcome::kUnreachable);
          absl::StatusOr<std::shared_ptr<Client>> c = NodeClient(node);
          if (!c.ok()) return o;
          std::vector<PageKey> sub;
          for (size_t k : idx) sub.push_back(keys[k]);
          absl::StatusOr<std::vector<bool>> e = (*c)->Exists(sub);
          if (!e.ok()) {
            NoteReachability(node, {e.status()});
            return o;
          }
          for (size_t j = 0; j < idx.size() && j < e->size(); ++j) {
            o[j] = (*e)[j] ? ReadOutcome::kHit : ReadOutcome::kMiss;
          }
          return o;
        });
    std::vector<bool> out(keys.size());
    for (size_t i = 0; i < keys.size(); ++i) out[i] = found[i] >= 0;
    return out;
  }

  absl::StatusOr<size_t> LongestPrefix(absl::Span<const PageKey> keys) override {
    // A chain's pages are spread over the nodes: ask for all, count the stored leading run.
    absl::StatusOr<std::vector<bool>> e = Exists(keys);
    if (!e.ok()) return e.status();
    size_t n = 0;
    while (n < e->size() && (*e)[n]) ++n;
    return n;
  }

  std::vector<absl::Status> Remove(absl::Span<const PageKey> keys) override {
    return OnAllReplicas(keys, [](Client& c, absl::Span<const PageKey> k) { return c.Remove(k); });
  }
  std::vector<absl::Status> Pin(absl::Span<const PageKey> keys) override {
    return OnAllReplicas(keys, [](Client& c, absl::Span<const PageKey> k) { return c.Pin(k); });
  }
  std::vector<absl::Status> Unpin(absl::Span<const PageKey> keys) override {
    return OnAllReplicas(keys, [](Client& c, absl::Span<const PageKey> k) { return c.Unpin(k); });
  }

  absl::StatusOr<size_t> Prefetch(absl::Span<const PageKey> keys,
                                  const std::string& tier) override {
    // Only the first replica: that is where reads go.
    std::map<std::string, std::pair<NodeInfo, std::vector<PageKey>>> by_node;
    for (const PageKey& k : keys) {
      std::vector<NodeInfo> r = router_->Route(RouteKey(k));
      if (r.empty()) continue;
      auto& slot = by_node[r[0].id];
      slot.first = r[0];
      slot.second.push_back(k);
    }
    size_t moved = 0;
    for (auto& [id, slot] : by_node) {
      absl::StatusOr<std::shared_ptr<Client>> c = NodeClient(slot.first);
      if (!c.ok()) continue;
      absl::StatusOr<size_t> m = (*c)->Prefetch(slot.second, tier);
      if (m.ok()) moved += *m;
    }
    return moved;
  }

  // Sums over the live nodes (tiers by name); nodes that do not answer are left out.
  absl::StatusOr<ServiceStats> Stats() override {
    ServiceStats sum;
    std::map<std::string, size_t> tier_index;
    int answered = 0;
    absl::Status last = absl::UnavailableError("cluster: no live node");
    // Held for the loop: a range-for over placement()->nodes() keeps only the vector reference,
    // and the membership thread frees that placement when the node set changes (TSan saw it).
    const std::shared_ptr<const cluster::Placement> placement = membership_->placement();
    for (const NodeInfo& n : placement->nodes()) {
      absl::StatusOr<std::shared_ptr<Client>> c = NodeClient(n);
      if (!c.ok()) continue;
      absl::StatusOr<ServiceStats> s = (*c)->Stats();
      if (!s.ok()) {
        last = s.status();
        continue;
      }
      ++answered;
      for (const TierUsage& t : s->tiers) {
        auto [it, added] = tier_index.emplace(t.name, sum.tiers.size());
        if (added) sum.tiers.push_back(TierUsage{t.name});
        TierUsage& d = sum.tiers[it->second];
        d.capacity_bytes += t.capacity_bytes;
        d.used_bytes += t.used_bytes;
        d.pages += t.pages;
        d.hits += t.hits;
        d.promotions += t.promotions;
        d.evictions += t.evictions;
      }
      sum.pages += s->pages;
      sum.misses += s->misses;
      sum.tenant_quota_bytes += s->tenant_quota_bytes;
      sum.bytes_in += s->bytes_in;
      sum.bytes_out += s->bytes_out;
      sum.uptime_s = std::max(sum.uptime_s, s->uptime_s);
      sum.active_leases += s->active_leases;
      sum.pinned_bytes += s->pinned_bytes;
      sum.checksum_failures += s->checksum_failures;
      sum.local_clients += s->local_clients;
    }
    if (answered == 0) return last;
    return sum;
  }

  // Serving when at least one live node serves; the other fields come from that node.
  absl::StatusOr<ServiceHealth> Health() override {
    absl::Status last = absl::UnavailableError("cluster: no live node");
    const std::shared_ptr<const cluster::Placement> placement = membership_->placement();
    for (const NodeInfo& n : placement->nodes()) {
      absl::StatusOr<std::shared_ptr<Client>> c = NodeClient(n);
      if (!c.ok()) {
        last = c.status();
        continue;
      }
      absl::StatusOr<ServiceHealth> h = (*c)->Health();
      if (h.ok() && h->serving) return h;
      if (!h.ok()) last = h.status();
    }
    return last;
  }

 protected:
  void Submit(std::function<void()> task) override { pool_->Submit(std::move(task)); }

 private:
  static std::vector<absl::uint128> Keys(absl::Span<const PutPage> pages) {
    std::vector<absl::uint128> keys(pages.size());
    for (size_t i = 0; i < pages.size(); ++i) keys[i] = RouteKey(pages[i].key);
    return keys;
  }

  // The connection to `node`, made on first use and remade when the node's address changed or
  // the last call could not reach it.
  absl::StatusOr<std::shared_ptr<Client>> NodeClient(const NodeInfo& node) {
    const std::string target = node.grpc_target();
    {
      absl::MutexLock l(&mu_);
      auto it = nodes_.find(node.id);
      if (it != nodes_.end() && it->second.first == target) return it->second.second;
    }
    ClientOptions o = options_.node;
    o.target = target;
    o.timeout = options_.node_timeout;
    if (node.id != options_.local_node_id) o.data_path = DataPathKind::kRemote;
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(o);
    if (!c.ok()) {
      router_->ReportFailure(node.id);
      if (IsUnreachable(c.status())) return c.status();
      return absl::UnavailableError(
          absl::StrCat("cluster: node ", node.id, ": ", c.status().message()));
    }
    std::shared_ptr<Client> shared(std::move(*c));
    absl::MutexLock l(&mu_);
    nodes_[node.id] = {target, shared};
    return shared;
  }

  // Drops the cached connection of a node whose calls could not reach it, so the next use
  // reconnects (the node may come back on another port, or with a fresh shared arena).
  void NoteReachability(const NodeInfo& node, const std::vector<absl::Status>& statuses) {
    bool any_unreachable = false;
    for (const absl::Status& s : statuses) any_unreachable |= IsUnreachable(s);
    if (!any_unreachable) return;
    unreachable_.fetch_add(1);
    absl::MutexLock l(&mu_);
    nodes_.erase(node.id);
  }

  template <typename Fn>
  std::vector<absl::Status> OnAllReplicas(absl::Span<const PageKey> keys, Fn fn) {
    std::map<std::string, std::pair<NodeInfo, std::vector<size_t>>> by_node;
    for (size_t i = 0; i < keys.size(); ++i) {
      for (NodeInfo& n : router_->Route(RouteKey(keys[i]))) {
        auto& slot = by_node[n.id];
        slot.first = n;
        slot.second.push_back(i);
      }
    }
    std::vector<std::vector<absl::Status>> answers(keys.size());
    for (auto& [id, slot] : by_node) {
      std::vector<PageKey> sub;
      for (size_t i : slot.second) sub.push_back(keys[i]);
      std::vector<absl::Status> got;
      absl::StatusOr<std::shared_ptr<Client>> c = NodeClient(slot.first);
      if (c.ok()) {
        got = fn(**c, sub);
        NoteReachability(slot.first, got);
      }
      got.resize(sub.size(), c.ok() ? absl::InternalError("wrong answer count") : c.status());
      for (size_t j = 0; j < sub.size(); ++j) answers[slot.second[j]].push_back(got[j]);
    }
    std::vector<absl::Status> out;
    out.reserve(keys.size());
    for (const auto& a : answers) out.push_back(MergeReplicaStatus(a));
    return out;
  }

  const ClusterClientOptions options_;
  std::unique_ptr<cluster::EtcdClient> etcd_;
  std::unique_ptr<cluster::Membership> membership_;
  std::unique_ptr<cluster::Router> router_;
  absl::Mutex mu_;
  // node id -> (target it was connected at, connection)
  absl::flat_hash_map<std::string, std::pair<std::string, std::shared_ptr<Client>>> nodes_
      ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> primary_hits_{0}, replica_hits_{0}, misses_{0}, unreachable_{0};
  std::unique_ptr<AsyncPool> pool_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ClusterClient>> ClusterClient::Connect(
    const ClusterClientOptions& options) {
  auto c = std::make_unique<ClusterClientImpl>(options);
  absl::Status s = c->Init();
  if (!s.ok()) return s;
  return std::unique_ptr<ClusterClient>(std::move(c));
}

}  // namespace pagoda
