#include "pagoda/retriever/store_index.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace pagoda::retriever {
namespace {

// Formatted here so the retriever needs only the page-model header of the store.
std::string KeyHex(const PageKey& key) {
  return absl::StrCat(absl::Hex(key.hi, absl::kZeroPad16), absl::Hex(key.lo, absl::kZeroPad16));
}

}  // namespace

absl::StatusOr<std::unique_ptr<StoreIndex>> StoreIndex::Create(const StoreIndexOptions& options) {
  if (options.kv_heads < 1) return absl::InvalidArgumentError("StoreIndex: kv_heads must be >= 1");
  auto index = std::unique_ptr<StoreIndex>(new StoreIndex(options));
  absl::MutexLock lock(&index->mu_);
  for (int h = 0; h < options.kv_heads; ++h) {
    auto head = PageIndex::Create(options.index);
    if (!head.ok()) return head.status();
    index->heads_.push_back(*std::move(head));
  }
  return index;
}

absl::Status StoreIndex::Add(const PageKey& key, absl::Span<const float> vectors) {
  const size_t d = options_.index.dim;
  if (vectors.size() != d * options_.kv_heads) {
    return absl::InvalidArgumentError(absl::StrCat("StoreIndex: page vectors must be [",
                                                   options_.kv_heads, ", ", d, "], got ",
                                                   vectors.size(), " values"));
  }
  absl::MutexLock lock(&mu_);
  if (ids_.contains(key)) {
    return absl::AlreadyExistsError(absl::StrCat("StoreIndex: page ", KeyHex(key), " present"));
  }
  const int64_t id = next_id_;
  for (int h = 0; h < options_.kv_heads; ++h) {
    const int64_t ids[1] = {id};
    absl::Status s = heads_[h]->Add(ids, vectors.subspan(h * d, d));
    if (!s.ok()) {
      for (int g = 0; g < h; ++g) heads_[g]->Remove(ids).IgnoreError();  // was just added
      return s;
    }
  }
  ++next_id_;
  ids_.emplace(key, id);
  keys_.emplace(id, key);
  return absl::OkStatus();
}

absl::Status StoreIndex::Remove(const PageKey& key) {
  absl::MutexLock lock(&mu_);
  auto it = ids_.find(key);
  if (it == ids_.end()) {
    return absl::NotFoundError(absl::StrCat("StoreIndex: page ", KeyHex(key), " not indexed"));
  }
  const int64_t ids[1] = {it->second};
  for (auto& head : heads_) {
    if (absl::Status s = head->Remove(ids); !s.ok()) return s;
  }
  keys_.erase(it->second);
  ids_.erase(it);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<StoreHit>> StoreIndex::Search(int kv_head, absl::Span<const float> query,
                                                         int k) const {
  if (kv_head < 0 || kv_head >= options_.kv_heads) {
    return absl::InvalidArgumentError(
        absl::StrCat("StoreIndex: kv_head ", kv_head, " outside [0, ", options_.kv_heads, ")"));
  }
  absl::ReaderMutexLock lock(&mu_);
  auto found = heads_[kv_head]->Search(query, k);
  if (!found.ok()) return found.status();
  std::vector<StoreHit> hits;
  hits.reserve(found->hits.size());
  for (const IndexHit& hit : found->hits) hits.push_back({keys_.at(hit.id), hit.score});
  return hits;
}

int64_t StoreIndex::size() const {
  absl::ReaderMutexLock lock(&mu_);
  return static_cast<int64_t>(ids_.size());
}

bool StoreIndex::Contains(const PageKey& key) const {
  absl::ReaderMutexLock lock(&mu_);
  return ids_.contains(key);
}

}  // namespace pagoda::retriever
