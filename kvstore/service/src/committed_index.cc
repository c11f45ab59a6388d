#include "committed_index.h"

#include <vector>

namespace pagoda::service {

void CommittedIndex::Add(const std::string& tenant, const PageKey& key) {
  absl::MutexLock l(&mu_);
  if (keys_[tenant].insert(key).second) ++count_;
  if (count_ > 2 * limit_) PruneLocked();
}

void CommittedIndex::Erase(const std::string& tenant, const PageKey& key) {
  absl::MutexLock l(&mu_);
  auto it = keys_.find(tenant);
  if (it != keys_.end() && it->second.erase(key)) --count_;
}

size_t CommittedIndex::size() const {
  absl::MutexLock l(&mu_);
  return count_;
}

void CommittedIndex::PruneLocked() {
  // Pages that already sit on SSD (or are gone) need no demotion at shutdown.
  count_ = 0;
  for (auto& entry : keys_) {
    const auto& tenant = entry.first;  // (clang 14 cannot capture a structured binding)
    auto& set = entry.second;
    absl::erase_if(set, [&](const PageKey& k) {
      absl::StatusOr<PageInfo> info = store_->Stat(tenant, k);
      return !info.ok() || info->tier == Tier::kSsd;
    });
    count_ += set.size();
  }
  if (count_ > limit_) limit_ = count_;  // all still in memory: let the index grow with them
}

absl::StatusOr<size_t> CommittedIndex::DemoteAllToSsd() {
  absl::MutexLock l(&mu_);
  size_t moved = 0;
  absl::Status first;
  for (auto& [tenant, set] : keys_) {
    std::vector<PageKey> keys(set.begin(), set.end());
    for (size_t i = 0; i < keys.size(); i += 1024) {
      absl::Span<const PageKey> part =
          absl::MakeConstSpan(keys).subspan(i, std::min<size_t>(1024, keys.size() - i));
      absl::StatusOr<size_t> n = store_->Demote(tenant, part, Tier::kSsd);
      if (!n.ok()) {
        if (first.ok()) first = n.status();
        break;  // e.g. this tenant is over its SSD quota; the other tenants still get theirs
      }
      moved += *n;
    }
  }
  keys_.clear();
  count_ = 0;
  if (!first.ok()) return first;
  return moved;
}

}  // namespace pagoda::service
