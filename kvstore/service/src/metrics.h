// Service metrics (request latency histograms, bytes moved, request outcomes) in a
// prometheus-cpp registry, rendered as Prometheus text together with the engine's tier gauges.
//
// Thread safety: safe for concurrent use without external synchronization.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"

namespace prometheus {
class Registry;
class Counter;
class Histogram;
template <typename T>
class Family;
}  // namespace prometheus

namespace pagoda::service {

// One tier's figures at scrape time (taken from the engine's stats).
struct TierSample {
  std::string name;
  uint64_t capacity_bytes = 0;
  uint64_t used_bytes = 0;
  uint64_t pages = 0;
  uint64_t hits = 0;
  uint64_t evictions = 0;
  uint64_t promotions = 0;
};

// What a crash could lose now, and the last checkpoint (taken from the engine's stats).
struct DurabilitySample {
  uint64_t memory_only_pages = 0;
  uint64_t checkpoints = 0;
  uint64_t checkpoint_failures = 0;
  // Unix time (ms) at which the last complete checkpoint began; 0 = none yet. Every page
  // acknowledged before it survives kill -9 and power loss.
  int64_t durable_before_unix_ms = 0;
  // The SSD tier's disk: what its segment files take (dead space included), the most it may take
  // (the configured ssd_bytes, or less once the file system filled first; 0 = unbounded) and how
  // often the file system ran out of space under it.
  uint64_t ssd_disk_bytes = 0;
  uint64_t ssd_limit_bytes = 0;
  uint64_t ssd_full = 0;
  uint64_t ssd_regrown = 0;
};

class ServiceMetrics {
 public:
  ServiceMetrics();
  ~ServiceMetrics();
  ServiceMetrics(const ServiceMetrics&) = delete;
  ServiceMetrics& operator=(const ServiceMetrics&) = delete;

  // One finished request: `method` is e.g. "Put", `path` "grpc" or "local".
  void ObserveRequest(std::string_view method, std::string_view path, const absl::Status& status,
                      double seconds);
  void AddBytesIn(std::string_view path, uint64_t bytes);
  void AddBytesOut(std::string_view path, uint64_t bytes);

  // Prometheus text exposition of the registry plus the tier samples, the store's misses and its
  // durability figures.
  std::string Render(const std::vector<TierSample>& tiers, uint64_t misses,
                     const DurabilitySample& durability) const;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Histogram>* latency_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Counter>* bytes_;
};

}  // namespace pagoda::service
