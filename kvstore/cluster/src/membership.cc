#include "pagoda/cluster/membership.h"

#include <map>
#include <utility>
#include <vector>

#include "spdlog/spdlog.h"

namespace pagoda::cluster {
namespace {

// The node id is the key below the prefix; the JSON must agree with it.
absl::StatusOr<NodeInfo> ParseEntry(const std::string& prefix, const EtcdKeyValue& kv) {
  absl::StatusOr<NodeInfo> node = NodeInfoFromJson(kv.value);
  if (!node.ok()) return node.status();
  if (kv.key.size() <= prefix.size() || kv.key.substr(prefix.size()) != node->id) {
    return absl::InvalidArgumentError("node key does not match the node id in its value");
  }
  return node;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Membership>> Membership::Start(EtcdClient* etcd,
                                                              MembershipOptions options) {
  if (etcd == nullptr) return absl::InvalidArgumentError("membership: no etcd client");
  if (options.prefix.empty()) return absl::InvalidArgumentError("membership: empty prefix");
  if (options.retry_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("membership: retry_interval must be positive");
  }
  std::unique_ptr<Membership> m(new Membership(etcd, std::move(options)));
  absl::StatusOr<int64_t> rev = m->Relist();
  if (!rev.ok()) return rev.status();
  m->thread_ = std::thread([p = m.get(), r = *rev] { p->Loop(r); });
  return m;
}

Membership::Membership(EtcdClient* etcd, MembershipOptions options)
    : etcd_(etcd),
      options_(std::move(options)),
      placement_(std::make_shared<const Placement>(std::vector<NodeInfo>{})) {}

Membership::~Membership() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    if (watch_ != nullptr) watch_->Cancel();
  }
  if (thread_.joinable()) thread_.join();
}

std::shared_ptr<const Placement> Membership::placement() const {
  absl::MutexLock lock(&mu_);
  return placement_;
}

uint64_t Membership::generation() const {
  absl::MutexLock lock(&mu_);
  return generation_;
}

bool Membership::WaitUntil(const std::function<bool(const Placement&)>& pred,
                           absl::Duration timeout) const {
  auto holds = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return pred(*placement_); };
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithTimeout(absl::Condition(&holds), timeout);
}

absl::StatusOr<int64_t> Membership::Relist() {
  absl::StatusOr<EtcdRangeResult> r = etcd_->GetPrefix(options_.prefix);
  if (!r.ok()) return r.status();
  std::vector<NodeInfo> nodes;
  for (const EtcdKeyValue& kv : r->kvs) {
    absl::StatusOr<NodeInfo> node = ParseEntry(options_.prefix, kv);
    if (!node.ok()) {
      spdlog::warn("cluster: skipping bad node entry {}: {}", kv.key, node.status().ToString());
      continue;
    }
    nodes.push_back(std::move(*node));
  }
  auto next = std::make_shared<const Placement>(std::move(nodes));
  absl::MutexLock lock(&mu_);
  if (next->nodes() != placement_->nodes()) {
    placement_ = std::move(next);
    ++generation_;
  }
  return r->revision;
}

void Membership::Loop(int64_t revision) {
  bool need_relist = false;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
    }
    if (need_relist) {
      absl::StatusOr<int64_t> rev = Relist();
      if (!rev.ok()) {
        absl::MutexLock lock(&mu_);
        auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
        mu_.AwaitWithTimeout(absl::Condition(&stop), options_.retry_interval);
        continue;
      }
      revision = *rev;
      need_relist = false;
    }
    absl::StatusOr<std::unique_ptr<EtcdWatch>> watch =
        etcd_->WatchPrefix(options_.prefix, revision + 1);
    if (!watch.ok()) {
      need_relist = true;
      absl::MutexLock lock(&mu_);
      auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
      mu_.AwaitWithTimeout(absl::Condition(&stop), options_.retry_interval);
      continue;
    }
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      watch_ = watch->get();
    }
    // Apply events to a copy of the current set; publish after each batch.
    std::map<std::string, NodeInfo> current;
    const std::shared_ptr<const Placement> start = placement();  // held: the loop reads it
    for (const NodeInfo& n : start->nodes()) current.emplace(n.id, n);
    while (true) {
      absl::StatusOr<std::vector<EtcdEvent>> events = (*watch)->Next();
      if (!events.ok()) {
        if (!absl::IsCancelled(events.status())) {
          spdlog::warn("cluster: membership watch ended: {}", events.status().ToString());
        }
        break;
      }
      for (const EtcdEvent& ev : *events) {
        revision = std::max(revision, ev.kv.mod_revision);
        const std::string id = ev.kv.key.substr(std::min(ev.kv.key.size(), options_.prefix.size()));
        if (ev.type == EtcdEvent::Type::kDelete) {
          current.erase(id);
          continue;
        }
        absl::StatusOr<NodeInfo> node = ParseEntry(options_.prefix, ev.kv);
        if (!node.ok()) {
          spdlog::warn("cluster: skipping bad node entry {}: {}", ev.kv.key,
                       node.status().ToString());
          current.erase(id);
          continue;
        }
        current[id] = std::move(*node);
      }
      std::vector<NodeInfo> nodes;
      nodes.reserve(current.size());
      for (const auto& [id, n] : current) nodes.push_back(n);
      auto next = std::make_shared<const Placement>(std::move(nodes));
      absl::MutexLock lock(&mu_);
      if (next->nodes() != placement_->nodes()) {
        placement_ = std::move(next);
        ++generation_;
      }
    }
    {
      absl::MutexLock lock(&mu_);
      watch_ = nullptr;
    }
    watch->reset();
    need_relist = true;  // we may have missed events while the stream was down
  }
}

}  // namespace pagoda::cluster
