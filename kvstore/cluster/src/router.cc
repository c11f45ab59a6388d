#include "pagoda/cluster/router.h"

#include <utility>

namespace pagoda::cluster {

absl::StatusOr<std::unique_ptr<Router>> Router::Create(PlacementSource source,
                                                       RouterOptions options) {
  if (!source) return absl::InvalidArgumentError("router: no placement source");
  if (options.replication < 1) {
    return absl::InvalidArgumentError("router: replication must be >= 1");
  }
  if (options.suspect_for < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("router: suspect_for must not be negative");
  }
  return std::unique_ptr<Router>(new Router(std::move(source), options));
}

std::vector<NodeInfo> Router::Route(absl::uint128 key) const {
  std::shared_ptr<const Placement> placement = source_();
  std::vector<NodeInfo> out;
  if (placement == nullptr || placement->size() == 0) return out;
  const size_t r = static_cast<size_t>(options_.replication);
  // Rank everything only when suspects exist; the common case ranks just R nodes.
  std::vector<size_t> ranked;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    bool any_suspect = false;
    for (const auto& [id, until] : suspect_until_) {
      if (until > now) {
        any_suspect = true;
        break;
      }
    }
    ranked = placement->Rank(key, any_suspect ? placement->size() : r);
    if (any_suspect) {
      std::vector<size_t> suspects;
      for (size_t idx : ranked) {
        const NodeInfo& n = placement->nodes()[idx];
        auto it = suspect_until_.find(n.id);
        if (it != suspect_until_.end() && it->second > now) {
          suspects.push_back(idx);
        } else if (out.size() < r) {
          out.push_back(n);
        }
      }
      for (size_t idx : suspects) {
        if (out.size() >= r) break;
        out.push_back(placement->nodes()[idx]);
      }
      return out;
    }
  }
  for (size_t idx : ranked) out.push_back(placement->nodes()[idx]);
  return out;
}

void Router::ReportFailure(std::string_view node_id) {
  absl::MutexLock lock(&mu_);
  suspect_until_[std::string(node_id)] = absl::Now() + options_.suspect_for;
}

void Router::ReportSuccess(std::string_view node_id) {
  absl::MutexLock lock(&mu_);
  suspect_until_.erase(std::string(node_id));
}

bool Router::IsSuspect(std::string_view node_id) const {
  absl::MutexLock lock(&mu_);
  auto it = suspect_until_.find(std::string(node_id));
  return it != suspect_until_.end() && it->second > absl::Now();
}

}  // namespace pagoda::cluster
