// Which KV heads can be streaming heads (attention sink + local window only): per-head statistics
// from a dense and an all-streaming prefill run of the same trace queries, the calibration rules
// that pick streaming heads from them, and the layer output error of a mixed choice.
#ifndef PAGODA_BENCH_RETRIEVER_STREAMING_HEADS_H_
#define PAGODA_BENCH_RETRIEVER_STREAMING_HEADS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "prefill_trace.h"

namespace pagoda::bench {

// One KV head's sums over (query, query head of its group) pairs.
struct HeadStats {
  double mass_sum = 0;  // share of the dense attention mass on sink + window: exp(lse_s - lse_d)
  double err_sum = 0;   // |o_streaming - o_dense| / |o_dense| of the query head
  int64_t n = 0;
  double kept_mass() const { return n > 0 ? mass_sum / n : 0; }
  double output_error() const { return n > 0 ? err_sum / n : 0; }
};

// Adds queries [q0, q1) (indices into both runs) to stats ([kv_heads], resized if empty).
void AccumulateHeadStats(const PrefillRun& dense, const PrefillRun& streaming, int32_t kv_heads,
                         int64_t q0, int64_t q1, std::vector<HeadStats>* stats);

// Streaming flags of one layer from its heads' calibration stats: every head whose output error
// is at most max_error.
std::vector<uint8_t> StreamByError(const std::vector<HeadStats>& layer, double max_error);

// Streaming flags of one layer: the round(fraction * heads) heads of lowest output error (ties:
// lower head index), LServe's fixed share of streaming heads per layer.
std::vector<uint8_t> StreamByFraction(const std::vector<HeadStats>& layer, double fraction);

// Per query in [q0, q1): the layer output error (all query heads concatenated) against `dense`
// when the KV heads flagged in `flags` take their output from `streaming` and the rest from
// `dense`. Equals the error of a prefill run with that mask (heads are computed independently).
std::vector<double> MixedErrors(const PrefillRun& dense, const PrefillRun& streaming,
                                const std::vector<uint8_t>& flags, int64_t q0, int64_t q1);

// One (doc, layer) trace prefilled over all its queries, densely and with every KV head streaming.
struct TraceRuns {
  std::shared_ptr<const TracePrefill> trace;
  PrefillRun dense, streaming;
  const std::string& doc() const { return trace->layer().doc; }
  int layer() const { return trace->layer().layer; }
  int32_t kv_heads() const { return trace->layer().kv_heads; }
  int64_t queries() const { return trace->layer().queries; }
};

// Loads every (doc, layer) trace of `dir` (all must have V) and runs both prefills (streaming
// heads keep `sink` + `window` tokens), `threads` traces at a time, sorted by doc then layer.
absl::StatusOr<std::vector<TraceRuns>> PrefillTraces(const std::string& dir, int32_t page_size,
                                                     int32_t sink, int32_t window, int threads);

// Calls fn(i) for i in [0, n) on `threads` threads; returns the first error (by index).
absl::Status ParallelFor(size_t n, int threads, const std::function<absl::Status(size_t)>& fn);

}  // namespace pagoda::bench

#endif  // PAGODA_BENCH_RETRIEVER_STREAMING_HEADS_H_
