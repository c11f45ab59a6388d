#include "metrics.h"

#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include "absl/status/status.h"

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
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  auto family = [&](const char* name, prometheus::MetricType type, const char* help, auto get) {
    prometheus::MetricFamily f{name, help, type, {}};
    for (const TierSample& t : tiers) {
      prometheus::ClientMetric m;
      m.label.push_back({"tier", t.name});
      const double v = static_cast<double>(get(t));
      if (type == prometheus::MetricType::Counter) {
        m.counter.value = v;
      } else {
        m.gauge.value = v;
      }
      f.metric.push_back(std::move(m));
    }
    families.push_back(std::move(f));
  };
  using prometheus::MetricType;
  family("pagoda_tier_capacity_bytes", MetricType::Gauge, "Capacity of each storage tier",
         [](const TierSample& t) { return t.capacity_bytes; });
  family("pagoda_tier_used_bytes", MetricType::Gauge, "Bytes of pages held in each tier",
         [](const TierSample& t) { return t.used_bytes; });
  family("pagoda_tier_pages", MetricType::Gauge, "Pages held in each tier",
         [](const TierSample& t) { return t.pages; });
  family("pagoda_tier_hits_total", MetricType::Counter, "Reads served by each tier",
         [](const TierSample& t) { return t.hits; });
  family("pagoda_tier_promotions_total", MetricType::Counter, "Pages moved up into each tier",
         [](const TierSample& t) { return t.promotions; });
  family("pagoda_tier_evictions_total", MetricType::Counter,
         "Pages evicted (demoted or dropped) per tier",
         [](const TierSample& t) { return t.evictions; });
  prometheus::MetricFamily miss{
      "pagoda_misses_total", "Reads of pages the store does not hold", MetricType::Counter, {}};
  miss.metric.emplace_back().counter.value = static_cast<double>(misses);
  families.push_back(std::move(miss));
  auto scalar = [&](const char* name, MetricType type, const char* help, uint64_t value) {
    prometheus::MetricFamily f{name, help, type, {}};
    prometheus::ClientMetric& m = f.metric.emplace_back();
    if (type == MetricType::Counter) {
      m.counter.value = static_cast<double>(value);
    } else {
      m.gauge.value = static_cast<double>(value);
    }
    families.push_back(std::move(f));
  };
  scalar("pagoda_memory_only_pages", MetricType::Gauge,
         "Pages whose only copy is in memory (what a crash now could lose)",
         durability.memory_only_pages);
  scalar("pagoda_checkpoints_total", MetricType::Counter,
         "Completed checkpoints of memory pages to SSD", durability.checkpoints);
  scalar("pagoda_checkpoint_failures_total", MetricType::Counter, "Checkpoints that failed",
         durability.checkpoint_failures);
  scalar("pagoda_durable_before_unix_ms", MetricType::Gauge,
         "Every page acknowledged before this Unix time (ms) survives a crash (0: none yet)",
         durability.durable_before_unix_ms);
  scalar("pagoda_ssd_disk_bytes", MetricType::Gauge,
         "Disk the SSD tier's segment files take, dead space included", durability.ssd_disk_bytes);
  scalar("pagoda_ssd_limit_bytes", MetricType::Gauge,
         "The most disk the SSD tier may take: ssd_bytes, or less once the file system filled "
         "first (0: unbounded)",
         durability.ssd_limit_bytes);
  scalar("pagoda_ssd_full_total", MetricType::Counter,
         "Times the file system ran out of space under the SSD tier", durability.ssd_full);
  scalar("pagoda_ssd_limit_regrown_total", MetricType::Counter,
         "Times the SSD tier's limit grew back after the file system had room again",
         durability.ssd_regrown);
  return prometheus::TextSerializer().Serialize(families);
}

}  // namespace pagoda::service
