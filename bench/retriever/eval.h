// Replays a trace layer decode step by decode step through retrieval policies and measures them
// against the exact per-head top-k oracle and the exact group-consistent oracle (one page set per
// KV head) computed from the true attention in the same run.
#ifndef PAGODA_BENCH_RETRIEVER_EVAL_H_
#define PAGODA_BENCH_RETRIEVER_EVAL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "pagoda/retriever/selector.h"
#include "trace.h"

namespace pagoda::bench {

// A policy as the tool names it: oracle, quest, lserve, louiskv, ann-flat, ann-ivf, ann-hnsw,
// streaming.
struct PolicySpec {
  std::string name;
  retriever::Policy policy = retriever::Policy::kQuest;
  retriever::AnnKind ann = retriever::AnnKind::kFlat;
};
absl::StatusOr<PolicySpec> ParsePolicySpec(const std::string& name);

struct EvalOptions {
  std::vector<PolicySpec> policies;
  std::vector<int> page_sizes = {16, 32, 64};
  std::vector<int> budget_denominators = {32, 16, 8};  // budget = T / den tokens (whole pages)
  int64_t max_steps = 0;  // decode steps replayed (0 = every query of the trace)
  int stride = 1;         // measure attention every stride-th step (selectors run every step)
  retriever::SelectorOptions base;  // shape fields are overwritten from the trace
  // louiskv: target retrievals per token for calibrating the threshold on the first
  // calib_steps queries; a threshold in [-1, 1] given by the user skips calibration.
  double louis_rate = 0.2;
  int64_t calib_steps = 256;
  float louis_threshold = 2.f;  // > 1: calibrate
};

struct ConfigStats {
  std::string doc;
  int layer = 0;
  std::string policy;
  int page_tokens = 0;
  int budget_den = 0;
  int64_t budget_tokens = 0;
  float threshold = 0;             // louiskv only
  std::vector<float> recall;       // per measured (step, query head): mass / oracle mass
  std::vector<float> oracle_mass;  // the oracle's share of attention, same order
  // Per measured (step, KV head): the group's selected mass / the group-consistent oracle's (the
  // best page set of that KV head by mass summed over its query heads); at most 1.
  std::vector<float> group_recall;
  double err_sum = 0;  // sum of |o_S - o| / |o|
  int64_t err_n = 0;
  int64_t steps = 0;
  int64_t retrievals = 0;
  double kv_bytes = 0, new_bytes = 0, summary_bytes = 0;  // sums over steps
  double select_ns = 0;                                   // Append + Select, sum over steps
};

// Runs every (policy, page size, budget) on one layer. Configurations whose budget exceeds the
// prompt are skipped.
absl::StatusOr<std::vector<ConfigStats>> EvaluateLayer(const TraceLayer& trace,
                                                       const EvalOptions& options);

}  // namespace pagoda::bench

#endif  // PAGODA_BENCH_RETRIEVER_EVAL_H_
