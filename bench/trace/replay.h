// Replays a request trace against Pagoda as a prefix cache. Per request: one lookup of the
// longest cached prefix of its chained block keys, a Get of the hit blocks (bytes verified
// against the pattern they were written with), a simulated prefill of the missed tokens (a sleep
// of a configurable cost per token: a GPU would do that work), and a Put of the missed blocks.
// Arrivals follow the trace timestamps divided by a compression factor, with at most `inflight`
// requests in flight (a late request starts as soon as a slot frees: the replay then runs behind
// the trace, which `pace` reports).
//
// Thread safety: Replay() is re-entrant; the target must be safe for concurrent use.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "mooncake_trace.h"
#include "pagoda/client/client.h"

namespace pagoda::trace {

// Where a request's blocks live.
class ReplayTarget {
 public:
  struct Route {
    Client* client = nullptr;
    size_t cached = 0;  // leading blocks the lookup reported stored
  };
  virtual ~ReplayTarget() = default;
  // Picks the client for a request and how long its cached prefix is there.
  virtual absl::StatusOr<Route> Lookup(absl::Span<const PageKey> keys) = 0;
  // Every client behind the target (for Stats).
  virtual std::vector<Client*> clients() = 0;
};

// One store (a pagodad, or a ClusterClient's pooled cluster): one LongestPrefix call.
class SingleStoreTarget : public ReplayTarget {
 public:
  explicit SingleStoreTarget(Client* c) : client_(c) {}
  absl::StatusOr<Route> Lookup(absl::Span<const PageKey> keys) override;
  std::vector<Client*> clients() override { return {client_}; }

 private:
  Client* client_;
};

// Standalone nodes, each its own cache: a request goes to the node holding its longest prefix
// (one LongestPrefix call per node); ties (most often: no node holds anything) go to the node
// that was sent the fewest requests so far, as a load-balancing scheduler would do.
class LongestPrefixRouter : public ReplayTarget {
 public:
  explicit LongestPrefixRouter(std::vector<Client*> nodes);
  absl::StatusOr<Route> Lookup(absl::Span<const PageKey> keys) override;
  std::vector<Client*> clients() override { return nodes_; }

 private:
  std::vector<Client*> nodes_;
  std::vector<std::atomic<uint64_t>> routed_;
};

struct ReplayOptions {
  uint32_t block_tokens = 512;
  LayoutId layout = 0;      // the layout of every block page
  uint64_t page_bytes = 0;  // PageLayout::FromId(layout)->PageBytes()
  double compress = 10;  // trace time / replay time of arrivals; 0 = no pacing (as fast as it goes)
  int inflight = 8;      // requests in flight at most (one worker thread each)
  // Simulated prefill cost of a missed token in trace time (the worker sleeps it, divided by
  // `compress` when paced); prefill_saved_s counts hit tokens at this cost.
  double prefill_us_per_token = 0;
  size_t batch_pages = 16;  // pages per Get / Put call
  // Called once, by the worker that takes request `hook_at` (e.g. kill -9 a node halfway).
  size_t hook_at = SIZE_MAX;
  std::function<void()> hook;
};

struct Latencies {
  std::vector<double> us;
  double Percentile(double p) const;  // 0 when empty
};

struct ReplayReport {
  uint64_t requests = 0, blocks = 0, tokens = 0;
  uint64_t hit_blocks = 0, hit_tokens = 0;  // served from the store, bytes verified
  uint64_t lookup_hit_blocks = 0;           // what the lookups promised
  uint64_t lost_hits = 0;                   // blocks a lookup reported but the Get did not serve
  uint64_t wrong_pages = 0;  // pages served with bytes other than those written: must be 0
  uint64_t verified_bytes = 0;
  uint64_t put_pages = 0, put_bytes = 0, put_already = 0;
  uint64_t lookup_errors = 0, get_errors = 0, put_errors = 0;  // calls / pages that failed
  uint64_t failed_requests = 0;                                // requests that saw any error
  double wall_s = 0;
  double trace_span_s = 0;                         // trace time covered (last - first timestamp)
  double prefill_saved_s = 0;                      // hit tokens x prefill cost
  uint64_t tier_hits_host = 0, tier_hits_ssd = 0;  // store-side tier hit counters (delta)
  uint64_t held_host = 0, held_ssd = 0;  // pages the tiers hold at the end (all clients' nodes)
  Latencies lookup, get, put, request;   // per request: its one lookup, all its gets, all its puts
  Latencies start_lag;  // how late each request started after its paced arrival time
  std::vector<std::string> first_errors;  // up to 5 distinct error texts
  double token_hit_rate() const { return tokens ? static_cast<double>(hit_tokens) / tokens : 0; }
  double pace() const { return wall_s > 0 ? trace_span_s / wall_s : 0; }  // x real time
};

// The page bytes a block key stands for (a function of the key only, so any reader can verify).
void FillBlock(const PageKey& key, absl::Span<uint8_t> out);
// Whether `bytes` are exactly FillBlock(key, ...).
bool CheckBlock(const PageKey& key, absl::Span<const uint8_t> bytes);

// Replays `requests` (chained keys in `keys`, same order) against `target`.
ReplayReport Replay(const std::vector<TraceRequest>& requests,
                    const std::vector<std::vector<PageKey>>& keys, ReplayTarget& target,
                    const ReplayOptions& options);

}  // namespace pagoda::trace
