#include "replay.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>
#include <tuple>

#include "absl/synchronization/mutex.h"

namespace pagoda::trace {
namespace {

using Clock = std::chrono::steady_clock;

double MicrosSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
}

inline uint64_t PatternWord(const PageKey& key, uint64_t i) {
  uint64_t x = key.hi + i * 0x9e3779b97f4a7c15ULL;
  x ^= key.lo;
  return x ^ (x >> 31);
}

// Per-tier hit counters (or held pages) summed over the target's clients.
std::pair<uint64_t, uint64_t> TierSums(ReplayTarget& target, bool pages) {
  uint64_t host = 0, ssd = 0;
  for (Client* c : target.clients()) {
    absl::StatusOr<ServiceStats> s = c->Stats();
    if (!s.ok()) continue;
    for (const TierUsage& t : s->tiers) {
      if (t.name == "host") host += pages ? t.pages : t.hits;
      if (t.name == "ssd") ssd += pages ? t.pages : t.hits;
    }
  }
  return {host, ssd};
}

// What one worker accumulates; merged at the end.
struct WorkerTally {
  ReplayReport r;
  std::vector<std::string> errors;
  void Error(const absl::Status& s) {
    if (errors.size() < 5) errors.push_back(s.ToString());
  }
};

void RunRequest(const TraceRequest& req, const std::vector<PageKey>& keys, ReplayTarget& target,
                const ReplayOptions& o, std::vector<uint8_t>& buf, WorkerTally& w) {
  ReplayReport& r = w.r;
  const auto t_req = Clock::now();
  ++r.requests;
  r.blocks += keys.size();
  for (size_t b = 0; b < keys.size(); ++b) r.tokens += BlockTokens(req, b, o.block_tokens);
  bool failed = false;

  auto t0 = Clock::now();
  absl::StatusOr<ReplayTarget::Route> route = target.Lookup(keys);
  r.lookup.us.push_back(MicrosSince(t0));
  if (!route.ok()) {
    ++r.lookup_errors;
    w.Error(route.status());
    ++r.failed_requests;
    return;
  }
  Client* c = route->client;
  const size_t cached = std::min(route->cached, keys.size());
  r.lookup_hit_blocks += cached;

  // Hits: read and verify, in batches; the served prefix ends at the first block not served.
  size_t served = 0;
  t0 = Clock::now();
  for (size_t i = 0; i < cached && served == i; i += o.batch_pages) {
    const size_t n = std::min(o.batch_pages, cached - i);
    std::vector<GetPage> gets(n);
    for (size_t j = 0; j < n; ++j) {
      gets[j] = {keys[i + j], absl::Span<uint8_t>(buf.data() + j * o.page_bytes, o.page_bytes)};
    }
    std::vector<GetResult> got = c->Get(gets);
    for (size_t j = 0; j < n && served == i + j; ++j) {
      const absl::Status s = j < got.size() ? got[j].status : absl::InternalError("short answer");
      if (!s.ok()) {
        if (!absl::IsNotFound(s)) {
          ++r.get_errors;
          failed = true;
          w.Error(s);
        }
        break;
      }
      if (got[j].size != o.page_bytes || !CheckBlock(keys[i + j], gets[j].out)) {
        ++r.wrong_pages;
        failed = true;
        break;
      }
      r.verified_bytes += o.page_bytes;
      ++served;
    }
  }
  if (cached > 0) r.get.us.push_back(MicrosSince(t0));
  r.lost_hits += cached - served;
  r.hit_blocks += served;
  uint64_t missed_tokens = 0;
  for (size_t b = 0; b < keys.size(); ++b) {
    const uint32_t t = BlockTokens(req, b, o.block_tokens);
    if (b < served) {
      r.hit_tokens += t;
    } else {
      missed_tokens += t;
    }
  }
  // Prefill of what missed (a GPU's work: the worker only waits).
  // Prefill runs on the trace's clock: compressed like the arrivals.
  if (o.prefill_us_per_token > 0 && missed_tokens > 0) {
    const double scale = o.compress > 0 ? 1.0 / o.compress : 1.0;
    std::this_thread::sleep_for(
        std::chrono::duration<double, std::micro>(o.prefill_us_per_token * missed_tokens * scale));
  }
  // Store what was computed.
  if (served < keys.size()) {
    t0 = Clock::now();
    for (size_t i = served; i < keys.size(); i += o.batch_pages) {
      const size_t n = std::min(o.batch_pages, keys.size() - i);
      std::vector<PutPage> puts(n);
      for (size_t j = 0; j < n; ++j) {
        absl::Span<uint8_t> page(buf.data() + j * o.page_bytes, o.page_bytes);
        FillBlock(keys[i + j], page);
        puts[j] = {keys[i + j], o.layout, page};
      }
      std::vector<absl::Status> st = c->Put(puts);
      for (size_t j = 0; j < n; ++j) {
        const absl::Status s = j < st.size() ? st[j] : absl::InternalError("short answer");
        if (s.ok()) {
          ++r.put_pages;
          r.put_bytes += o.page_bytes;
        } else if (absl::IsAlreadyExists(s)) {
          ++r.put_already;
        } else {
          ++r.put_errors;
          failed = true;
          w.Error(s);
        }
      }
    }
    r.put.us.push_back(MicrosSince(t0));
  }
  if (failed) ++r.failed_requests;
  r.request.us.push_back(MicrosSince(t_req));
}

void Merge(ReplayReport& into, WorkerTally& w) {
  const ReplayReport& r = w.r;
  into.requests += r.requests;
  into.blocks += r.blocks;
  into.tokens += r.tokens;
  into.hit_blocks += r.hit_blocks;
  into.hit_tokens += r.hit_tokens;
  into.lookup_hit_blocks += r.lookup_hit_blocks;
  into.lost_hits += r.lost_hits;
  into.wrong_pages += r.wrong_pages;
  into.verified_bytes += r.verified_bytes;
  into.put_pages += r.put_pages;
  into.put_bytes += r.put_bytes;
  into.put_already += r.put_already;
  into.lookup_errors += r.lookup_errors;
  into.get_errors += r.get_errors;
  into.put_errors += r.put_errors;
  into.failed_requests += r.failed_requests;
  auto cat = [](Latencies& a, const Latencies& b) {
    a.us.insert(a.us.end(), b.us.begin(), b.us.end());
  };
  cat(into.lookup, r.lookup);
  cat(into.get, r.get);
  cat(into.put, r.put);
  cat(into.request, r.request);
  cat(into.start_lag, r.start_lag);
  for (const std::string& e : w.errors) {
    if (into.first_errors.size() < 5 &&
        std::find(into.first_errors.begin(), into.first_errors.end(), e) ==
            into.first_errors.end()) {
      into.first_errors.push_back(e);
    }
  }
}

}  // namespace

absl::StatusOr<ReplayTarget::Route> SingleStoreTarget::Lookup(absl::Span<const PageKey> keys) {
  absl::StatusOr<size_t> n = client_->LongestPrefix(keys);
  if (!n.ok()) return n.status();
  return Route{client_, *n};
}

LongestPrefixRouter::LongestPrefixRouter(std::vector<Client*> nodes)
    : nodes_(std::move(nodes)), routed_(nodes_.size()) {}

absl::StatusOr<ReplayTarget::Route> LongestPrefixRouter::Lookup(absl::Span<const PageKey> keys) {
  size_t best = 0, best_len = 0;
  bool any = false;
  absl::Status last = absl::UnavailableError("no node answered");
  for (size_t i = 0; i < nodes_.size(); ++i) {
    absl::StatusOr<size_t> n = nodes_[i]->LongestPrefix(keys);
    if (!n.ok()) {
      last = n.status();
      continue;
    }
    if (!any || *n > best_len || (*n == best_len && routed_[i].load() < routed_[best].load())) {
      best = i;
      best_len = *n;
    }
    any = true;
  }
  if (!any) return last;
  routed_[best].fetch_add(1);
  return Route{nodes_[best], best_len};
}

double Latencies::Percentile(double p) const {
  if (us.empty()) return 0;
  std::vector<double> v = us;
  const size_t k = std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5));
  std::nth_element(v.begin(), v.begin() + k, v.end());
  return v[k];
}

void FillBlock(const PageKey& key, absl::Span<uint8_t> out) {
  const size_t words = out.size() / 8;
  uint64_t* w = reinterpret_cast<uint64_t*>(out.data());
  for (size_t i = 0; i < words; ++i) w[i] = PatternWord(key, i);
  for (size_t i = words * 8; i < out.size(); ++i) out[i] = static_cast<uint8_t>(key.lo >> (i % 8));
}

bool CheckBlock(const PageKey& key, absl::Span<const uint8_t> bytes) {
  const size_t words = bytes.size() / 8;
  const uint64_t* w = reinterpret_cast<const uint64_t*>(bytes.data());
  uint64_t diff = 0;
  for (size_t i = 0; i < words; ++i) diff |= w[i] ^ PatternWord(key, i);
  for (size_t i = words * 8; i < bytes.size(); ++i) {
    diff |= bytes[i] ^ static_cast<uint8_t>(key.lo >> (i % 8));
  }
  return diff == 0;
}

ReplayReport Replay(const std::vector<TraceRequest>& requests,
                    const std::vector<std::vector<PageKey>>& keys, ReplayTarget& target,
                    const ReplayOptions& o) {
  ReplayReport report;
  if (requests.empty()) return report;
  const double t_first = requests.front().timestamp_ms;
  report.trace_span_s = (requests.back().timestamp_ms - t_first) / 1000.0;
  const auto [host0, ssd0] = TierSums(target, false);
  std::atomic<size_t> next{0};
  std::vector<WorkerTally> tallies(std::max(1, o.inflight));
  const auto start = Clock::now();
  std::vector<std::thread> workers;
  for (WorkerTally& w : tallies) {
    workers.emplace_back([&] {
      std::vector<uint8_t> buf(o.batch_pages * o.page_bytes);
      while (true) {
        const size_t i = next.fetch_add(1);
        if (i >= requests.size()) return;
        if (i == o.hook_at && o.hook) o.hook();
        if (o.compress > 0) {
          const double at_us = (requests[i].timestamp_ms - t_first) * 1000.0 / o.compress;
          const auto at = start + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double, std::micro>(at_us));
          std::this_thread::sleep_until(at);
          w.r.start_lag.us.push_back(
              std::chrono::duration<double, std::micro>(Clock::now() - at).count());
        }
        RunRequest(requests[i], keys[i], target, o, buf, w);
      }
    });
  }
  for (std::thread& t : workers) t.join();
  report.wall_s = std::chrono::duration<double>(Clock::now() - start).count();
  for (WorkerTally& w : tallies) Merge(report, w);
  const auto [host1, ssd1] = TierSums(target, false);
  report.tier_hits_host = host1 - host0;
  report.tier_hits_ssd = ssd1 - ssd0;
  std::tie(report.held_host, report.held_ssd) = TierSums(target, true);
  report.prefill_saved_s = report.hit_tokens * o.prefill_us_per_token / 1e6;
  return report;
}

}  // namespace pagoda::trace
