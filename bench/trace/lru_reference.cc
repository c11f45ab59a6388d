#include "lru_reference.h"

namespace pagoda::trace {

void PrefixLru::Touch(absl::uint128 k) {
  auto it = index_.find(k);
  if (it != index_.end()) {
    order_.splice(order_.begin(), order_, it->second);
    return;
  }
  order_.push_front(k);
  index_[k] = order_.begin();
  if (capacity_ > 0 && index_.size() > capacity_) {
    index_.erase(order_.back());
    order_.pop_back();
  }
}

size_t PrefixLru::Access(const std::vector<PageKey>& keys) {
  size_t hit = 0;
  while (hit < keys.size() && index_.contains(absl::MakeUint128(keys[hit].hi, keys[hit].lo))) {
    ++hit;
  }
  for (const PageKey& k : keys) Touch(absl::MakeUint128(k.hi, k.lo));
  return hit;
}

SimResult Simulate(const std::vector<TraceRequest>& requests,
                   const std::vector<std::vector<PageKey>>& keys, uint64_t capacity_blocks,
                   uint32_t block_tokens) {
  PrefixLru lru(capacity_blocks);
  SimResult r;
  for (size_t i = 0; i < requests.size(); ++i) {
    const size_t hit = lru.Access(keys[i]);
    ++r.requests;
    r.blocks += keys[i].size();
    r.hit_blocks += hit;
    for (size_t b = 0; b < keys[i].size(); ++b) {
      const uint32_t t = BlockTokens(requests[i], b, block_tokens);
      r.tokens += t;
      if (b < hit) r.hit_tokens += t;
    }
  }
  return r;
}

}  // namespace pagoda::trace
