// The reference a replay is judged against: one ideal LRU prefix cache over a trace's chained
// block keys, simulated in trace order. Per request: the hit is the longest leading run of its
// blocks present in the cache; those blocks are touched (most recent first-to-last in chain
// order), the rest are inserted, and the least recently used blocks are evicted past
// `capacity_blocks`. With capacity 0 the cache is unbounded: the trace's maximum hit rate.
//
// Thread safety: a PrefixLru is not thread-safe; Simulate is a pure function.
#pragma once

#include <cstdint>
#include <list>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/numeric/int128.h"
#include "mooncake_trace.h"

namespace pagoda::trace {

class PrefixLru {
 public:
  explicit PrefixLru(uint64_t capacity_blocks) : capacity_(capacity_blocks) {}
  // Runs one request (its chained keys); returns how many leading blocks hit.
  size_t Access(const std::vector<PageKey>& keys);
  size_t size() const { return index_.size(); }

 private:
  void Touch(absl::uint128 k);
  uint64_t capacity_;               // 0 = unbounded
  std::list<absl::uint128> order_;  // front = most recent
  absl::flat_hash_map<absl::uint128, std::list<absl::uint128>::iterator> index_;
};

struct SimResult {
  uint64_t requests = 0;
  uint64_t blocks = 0;
  uint64_t hit_blocks = 0;
  uint64_t tokens = 0;
  uint64_t hit_tokens = 0;
  double token_hit_rate() const { return tokens ? static_cast<double>(hit_tokens) / tokens : 0; }
  double block_hit_rate() const { return blocks ? static_cast<double>(hit_blocks) / blocks : 0; }
};

// Replays `requests` (with their chained keys `keys`, same order) through one PrefixLru of
// `capacity_blocks` (0 = unbounded).
SimResult Simulate(const std::vector<TraceRequest>& requests,
                   const std::vector<std::vector<PageKey>>& keys, uint64_t capacity_blocks,
                   uint32_t block_tokens);

}  // namespace pagoda::trace
