#include "pagoda/cluster/placement.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#define XXH_INLINE_ALL
#include "xxhash.h"

namespace pagoda::cluster {
namespace {
constexpr uint64_t kNodeSeedSalt = 0x7061676f64616e64ULL;  // "pagodand"

double Score(absl::uint128 key, uint64_t seed, double weight) {
  const uint64_t h = RendezvousHash(key, seed);
  // u in (0, 1): 53 random bits, offset by half a step so it is never 0 or 1.
  const double u = (static_cast<double>(h >> 11) + 0.5) * 0x1.0p-53;
  return weight / -std::log(u);
}
}  // namespace

uint64_t NodeSeed(std::string_view node_id) {
  return XXH3_64bits_withSeed(node_id.data(), node_id.size(), kNodeSeedSalt);
}

uint64_t RendezvousHash(absl::uint128 key, uint64_t node_seed) {
  unsigned char bytes[16];
  const uint64_t hi = absl::Uint128High64(key);
  const uint64_t lo = absl::Uint128Low64(key);
  for (int i = 0; i < 8; ++i) {  // little-endian, independent of the host's byte order
    bytes[i] = static_cast<unsigned char>(lo >> (8 * i));
    bytes[8 + i] = static_cast<unsigned char>(hi >> (8 * i));
  }
  return XXH3_64bits_withSeed(bytes, sizeof(bytes), node_seed);
}

Placement::Placement(std::vector<NodeInfo> nodes) {
  std::stable_sort(nodes.begin(), nodes.end(),
                   [](const NodeInfo& a, const NodeInfo& b) { return a.id < b.id; });
  for (NodeInfo& n : nodes) {
    if (!nodes_.empty() && nodes_.back().id == n.id) {
      nodes_.back() = std::move(n);
    } else {
      nodes_.push_back(std::move(n));
    }
  }
  seeds_.reserve(nodes_.size());
  for (const NodeInfo& n : nodes_) {
    seeds_.push_back(NodeSeed(n.id));
    uniform_weights_ = uniform_weights_ && n.weight == nodes_.front().weight;
  }
}

namespace {

// The best `count` indices by score (higher first, then lower index), without allocating beyond
// the result for the usual tiny counts (the replication factor).
template <typename Score, typename ScoreFn>
std::vector<size_t> TopK(size_t n, size_t count, ScoreFn score) {
  count = std::min(count, n);
  std::vector<size_t> out;
  if (count == 0) return out;
  using Entry = std::pair<Score, size_t>;
  auto better = [](const Entry& a, const Entry& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  };
  constexpr size_t kSmall = 8;
  if (count <= kSmall) {
    Entry best[kSmall];
    size_t have = 0;
    for (size_t i = 0; i < n; ++i) {
      const Entry e{score(i), i};
      if (have == count && !better(e, best[count - 1])) continue;
      size_t pos = have < count ? have++ : count - 1;
      while (pos > 0 && better(e, best[pos - 1])) {
        best[pos] = best[pos - 1];
        --pos;
      }
      best[pos] = e;
    }
    out.reserve(count);
    for (size_t i = 0; i < count; ++i) out.push_back(best[i].second);
    return out;
  }
  std::vector<Entry> scored;
  scored.reserve(n);
  for (size_t i = 0; i < n; ++i) scored.emplace_back(score(i), i);
  std::partial_sort(scored.begin(), scored.begin() + count, scored.end(), better);
  out.reserve(count);
  for (size_t i = 0; i < count; ++i) out.push_back(scored[i].second);
  return out;
}

}  // namespace

std::vector<size_t> Placement::Rank(absl::uint128 key, size_t count) const {
  // nodes_ is sorted by id, so the lower index is the lower id on ties.
  if (uniform_weights_) {
    // weight / -ln(u) with one weight for all is monotonic in the hash: compare hashes, no log.
    return TopK<uint64_t>(nodes_.size(), count,
                          [&](size_t i) { return RendezvousHash(key, seeds_[i]); });
  }
  return TopK<double>(nodes_.size(), count,
                      [&](size_t i) { return Score(key, seeds_[i], nodes_[i].weight); });
}

int Placement::Find(std::string_view id) const {
  auto it = std::lower_bound(nodes_.begin(), nodes_.end(), id,
                             [](const NodeInfo& n, std::string_view v) { return n.id < v; });
  if (it == nodes_.end() || it->id != id) return -1;
  return static_cast<int>(it - nodes_.begin());
}

}  // namespace pagoda::cluster
