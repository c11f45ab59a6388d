#include "metrics.h"

#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace pagoda::service {

ServiceMetrics::ServiceMetrics() : registry_(std::make_shared<prometheus::Registry>()) {
  latency_ = &prometheus::BuildHistogram()
                  .Name("pagoda_request_seconds")
                  .Help("Latency of pagodad requests by method and path")
                  .Register(*registry_);
  requests_ = &prometheus::BuildCounter()
                   .Name("pagoda_requests_total")
                   .Help("pagodad requests by method, path and status code")
                   .Register(*registry_);
  bytes_ = &prometheus::BuildCounter()
                .Name("pagoda_page_bytes_total")
                .Help("Page bytes moved by the service (direction in/out, path grpc/local)")
                .Register(*registry_);
}

ServiceMetrics::~ServiceMetrics() = default;

void ServiceMetrics::ObserveRequest(std::string_view method, std::string_view path,
                                    const absl::Status& status, double seconds) {
  // 5 us .. 2.6 s, doubling.
  static const prometheus::Histogram::BucketBoundaries kBuckets = [] {
    prometheus::Histogram::BucketBoundaries b;
    for (double v = 5e-6; v < 3.0; v *= 2) b.push_back(v);
    return b;
  }();
  std::map<std::string, std::string> labels = {{"method", std::string(method)},
                                               {"path", std::string(path)}};
  latency_->Add(labels, kBuckets).Observe(seconds);
  labels["code"] = absl::StatusCodeToString(status.code());
  requests_->Add(labels).Increment();
}

void ServiceMetrics::AddBytesIn(std::string_view path, uint64_t bytes) {
  bytes_->Add({{"direction", "in"}, {"path", std::string(path)}}).Increment(double(bytes));
}

void ServiceMetrics::AddBytesOut(std::string_view path, uint64_t bytes) {
  bytes_->Add({{"direction", "out"}, {"path", std::string(path)}}).Increment(double(bytes));
}

std::string ServiceMetrics::Render(const std::vector<TierSample>& tiers, uint64_t misses,
                                   const DurabilitySample& durability) const {
  std::string out = prometheus::TextSerializer().Serialize(registry_->Collect());
  auto family = [&](const char* name, const char* type, const char* help, auto get) {
    absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
    for (const TierSample& t : tiers) {
      absl::StrAppend(&out, name, "{tier=\"", t.name, "\"} ", get(t), "\n");
    }
  };
  family("pagoda_tier_capacity_bytes", "gauge", "Capacity of each storage tier",
         [](const TierSample& t) { return t.capacity_bytes; });
  family("pagoda_tier_used_bytes", "gauge", "Bytes of pages held in each tier",
         [](const TierSample& t) { return t.used_bytes; });
  family("pagoda_tier_pages", "gauge", "Pages held in each tier",
         [](const TierSample& t) { return t.pages; });
  family("pagoda_tier_hits_total", "counter", "Reads served by each tier",
         [](const TierSample& t) { return t.hits; });
  family("pagoda_tier_promotions_total", "counter", "Pages moved up into each tier",
         [](const TierSample& t) { return t.promotions; });
  family("pagoda_tier_evictions_total", "counter", "Pages evicted (demoted or dropped) per tier",
         [](const TierSample& t) { return t.evictions; });
  absl::StrAppend(&out,
                  "# HELP pagoda_misses_total Reads of pages the store does not hold\n"
                  "# TYPE pagoda_misses_total counter\npagoda_misses_total ",
                  misses, "\n");
  auto scalar = [&](const char* name, const char* type, const char* help, auto value) {
    absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n", name, " ",
                    value, "\n");
  };
  scalar("pagoda_memory_only_pages", "gauge",
         "Pages whose only copy is in memory (what a crash now could lose)",
         durability.memory_only_pages);
  scalar("pagoda_checkpoints_total", "counter", "Completed checkpoints of memory pages to SSD",
         durability.checkpoints);
  scalar("pagoda_checkpoint_failures_total", "counter", "Checkpoints that failed",
         durability.checkpoint_failures);
  scalar("pagoda_durable_before_unix_ms", "gauge",
         "Every page acknowledged before this Unix time (ms) survives a crash (0: none yet)",
         durability.durable_before_unix_ms);
  return out;
}

}  // namespace pagoda::service
