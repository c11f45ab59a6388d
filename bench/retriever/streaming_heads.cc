#include "streaming_heads.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <numeric>
#include <thread>

#include "trace.h"

namespace pagoda::bench {

void AccumulateHeadStats(const PrefillRun& dense, const PrefillRun& streaming, int32_t kv_heads,
                         int64_t q0, int64_t q1, std::vector<HeadStats>* stats) {
  stats->resize(kv_heads);
  const int32_t hq = dense.q_heads, group = hq / kv_heads;
  for (int32_t h = 0; h < hq; ++h) {
    const std::vector<double> err = QueryErrors(dense, streaming, h, h + 1);
    HeadStats& s = (*stats)[h / group];
    for (int64_t i = q0; i < q1; ++i) {
      const double lse_d = dense.lse[i * hq + h], lse_s = streaming.lse[i * hq + h];
      s.mass_sum += std::isinf(lse_s) ? 0.0 : std::min(1.0, std::exp(lse_s - lse_d));
      s.err_sum += err[i];
      ++s.n;
    }
  }
}

std::vector<uint8_t> StreamByError(const std::vector<HeadStats>& layer, double max_error) {
  std::vector<uint8_t> flags(layer.size());
  for (size_t h = 0; h < layer.size(); ++h) flags[h] = layer[h].output_error() <= max_error;
  return flags;
}

std::vector<uint8_t> StreamByFraction(const std::vector<HeadStats>& layer, double fraction) {
  std::vector<size_t> order(layer.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return layer[a].output_error() < layer[b].output_error();
  });
  const size_t n = std::min(
      layer.size(), static_cast<size_t>(std::lround(fraction * static_cast<double>(layer.size()))));
  std::vector<uint8_t> flags(layer.size(), 0);
  for (size_t i = 0; i < n; ++i) flags[order[i]] = 1;
  return flags;
}

std::vector<double> MixedErrors(const PrefillRun& dense, const PrefillRun& streaming,
                                const std::vector<uint8_t>& flags, int64_t q0, int64_t q1) {
  const int64_t hq = dense.q_heads, dim = dense.head_dim;
  const int64_t group = hq / static_cast<int64_t>(flags.size());
  std::vector<double> err;
  for (int64_t i = q0; i < q1; ++i) {
    double num = 0, den = 0;
    for (int64_t h = 0; h < hq; ++h) {
      const bool s = flags[h / group] != 0;
      for (int64_t d = 0; d < dim; ++d) {
        const int64_t e = (i * hq + h) * dim + d;
        const double diff = s ? static_cast<double>(streaming.o[e]) - dense.o[e] : 0.0;
        num += diff * diff;
        den += static_cast<double>(dense.o[e]) * dense.o[e];
      }
    }
    err.push_back(den > 0 ? std::sqrt(num / den) : std::sqrt(num));
  }
  return err;
}

absl::Status ParallelFor(size_t n, int threads, const std::function<absl::Status(size_t)>& fn) {
  std::vector<absl::Status> status(n);
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i; (i = next++) < n;) status[i] = fn(i);
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < std::max(1, threads); ++t) pool.emplace_back(worker);
  for (auto& t : pool) t.join();
  for (const absl::Status& s : status) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<TraceRuns>> PrefillTraces(const std::string& dir, int32_t page_size,
                                                     int32_t sink, int32_t window, int threads) {
  auto files = FindTraces(dir);
  if (!files.ok()) return files.status();
  std::vector<TraceRuns> runs(files->size());
  absl::Status s = ParallelFor(files->size(), threads, [&](size_t i) -> absl::Status {
    auto layer = LoadTrace((*files)[i]);
    if (!layer.ok()) return layer.status();
    auto tp = TracePrefill::Create(*layer, page_size);
    if (!tp.ok()) return tp.status();
    TraceRuns& r = runs[i];
    r.trace = std::make_shared<const TracePrefill>(std::move(*tp));
    PrefillMask dense;
    dense.chunk = r.queries();
    PrefillMask streaming = dense;
    streaming.streaming.assign(r.kv_heads(), 1);
    streaming.sink_tokens = sink;
    streaming.window_tokens = window;
    auto d = r.trace->Run(dense, 0, r.queries());
    if (!d.ok()) return d.status();
    auto st = r.trace->Run(streaming, 0, r.queries());
    if (!st.ok()) return st.status();
    r.dense = std::move(*d);
    r.streaming = std::move(*st);
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return runs;
}

}  // namespace pagoda::bench
