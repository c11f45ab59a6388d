#include "pagoda/retriever/store_index.h"

#include <algorithm>
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

absl::Status StoreIndex::Train(absl::Span<const float> samples) {
  const size_t d = options_.index.dim;
  const size_t per_page = d * options_.kv_heads;
  if (samples.empty() || samples.size() % per_page != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("StoreIndex: Train needs [n >= 1, ", options_.kv_heads, ", ", d, "] samples"));
  }
  const size_t n = samples.size() / per_page;
  absl::MutexLock lock(&mu_);
  for (int h = 0; h < options_.kv_heads; ++h) {
    if (heads_[h]->trained() && options_.index.kind == AnnKind::kIvf) {
      return absl::FailedPreconditionError("StoreIndex: already trained");
    }
  }
  std::vector<float> head(n * d);
  for (int h = 0; h < options_.kv_heads; ++h) {
    for (size_t i = 0; i < n; ++i) {
      std::copy_n(samples.data() + i * per_page + h * d, d, head.data() + i * d);
    }
    if (absl::Status s = heads_[h]->Train(head); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status StoreIndex::Add(const PageKey& key, absl::Span<const float> vectors) {
  return AddBatch(absl::MakeConstSpan(&key, 1), vectors);
}

absl::Status StoreIndex::AddBatch(absl::Span<const PageKey> keys, absl::Span<const float> vectors) {
  const size_t d = options_.index.dim;
  const size_t per_page = d * options_.kv_heads;
  if (vectors.size() != per_page * keys.size()) {
    return absl::InvalidArgumentError(absl::StrCat("StoreIndex: page vectors must be [",
                                                   keys.size(), ", ", options_.kv_heads, ", ", d,
                                                   "], got ", vectors.size(), " values"));
  }
  if (keys.empty()) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  absl::flat_hash_map<PageKey, int64_t> batch;
  std::vector<int64_t> ids(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    ids[i] = next_id_ + static_cast<int64_t>(i);
    if (ids_.contains(keys[i]) || !batch.emplace(keys[i], ids[i]).second) {
      return absl::AlreadyExistsError(
          absl::StrCat("StoreIndex: page ", KeyHex(keys[i]), " present"));
    }
  }
  std::vector<float> head(keys.size() * d);
  for (int h = 0; h < options_.kv_heads; ++h) {
    for (size_t i = 0; i < keys.size(); ++i) {
      std::copy_n(vectors.data() + i * per_page + h * d, d, head.data() + i * d);
    }
    absl::Status s = heads_[h]->Add(ids, head);
    if (!s.ok()) {
      for (int g = 0; g < h; ++g) heads_[g]->Remove(ids).IgnoreError();  // were just added
      return s;
    }
  }
  next_id_ += static_cast<int64_t>(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    ids_.emplace(keys[i], ids[i]);
    keys_.emplace(ids[i], keys[i]);
  }
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
