// retriever_eval: measures page-retrieval policies on attention traces (any directory in the
// format of ../shared/data/traces) against the exact top-k oracle of the same run.
//
//   retriever_eval --traces DIR [--policies quest,lserve,...] [--page-sizes 16,32,64]
//                  [--budgets 32,16,8] [--steps N] [--stride S] [--threads 2]
//
// Prints one markdown table over all (doc, layer) pairs: per policy, page size and budget (1/den
// of the context), attention-mass recall vs the oracle (mean and 5th percentile over steps and
// query heads), recall vs the group-consistent oracle (one page set per KV head, the best by the
// group's summed mass: the ceiling of any selection the kernels consume; per step and KV head,
// the group's selected mass / the group oracle's), output error |o_S - o| / |o| (when V is
// present), retrievals per token, bytes per step (KV attended, KV newly moved, summaries scanned)
// and selection time per step.
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "eval.h"
#include "trace.h"

namespace pagoda::bench {
namespace {

double Percentile(std::vector<float> v, double q) {
  if (v.empty()) return 0;
  const size_t k = static_cast<size_t>(q * (v.size() - 1));
  std::nth_element(v.begin(), v.begin() + k, v.end());
  return v[k];
}

void PrintTable(const std::vector<ConfigStats>& all, const std::vector<std::string>& order,
                bool per_layer) {
  // Pool the (doc, layer) runs of each configuration (or keep them apart with per_layer).
  using Key = std::tuple<int, int, int, std::string>;  // page, -den, policy index, doc/layer
  std::map<Key, std::vector<const ConfigStats*>> groups;
  for (const ConfigStats& s : all) {
    const int idx =
        static_cast<int>(std::find(order.begin(), order.end(), s.policy) - order.begin());
    const std::string where = per_layer ? absl::StrFormat("%s L%02d", s.doc, s.layer) : "all";
    groups[{s.page_tokens, -s.budget_den, idx, where}].push_back(&s);
  }
  std::map<std::tuple<int, int, std::string>, double> quest_bytes;
  struct Row {
    Key key;
    std::string text;
  };
  std::printf(
      "| traces | policy | page | budget | recall mean | recall p5 | group recall mean | group "
      "recall p5 | oracle mass | out err | retr/token | KV KiB/step | new KiB/step | summ "
      "KiB/step | total KiB/step | bytes vs quest | select us/step |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::vector<std::pair<Key, std::vector<double>>> rows;
  for (const auto& [key, runs] : groups) {
    std::vector<float> recall, oracle, group_recall;
    double err = 0, err_n = 0, steps = 0, retr = 0, kv = 0, fresh = 0, summ = 0, ns = 0;
    for (const ConfigStats* s : runs) {
      recall.insert(recall.end(), s->recall.begin(), s->recall.end());
      oracle.insert(oracle.end(), s->oracle_mass.begin(), s->oracle_mass.end());
      group_recall.insert(group_recall.end(), s->group_recall.begin(), s->group_recall.end());
      err += s->err_sum;
      err_n += s->err_n;
      steps += s->steps;
      retr += s->retrievals;
      kv += s->kv_bytes;
      fresh += s->new_bytes;
      summ += s->summary_bytes;
      ns += s->select_ns;
    }
    double mean = 0, omean = 0, gmean = 0;
    for (float r : recall) mean += r;
    for (float r : oracle) omean += r;
    for (float r : group_recall) gmean += r;
    mean /= std::max<size_t>(1, recall.size());
    omean /= std::max<size_t>(1, oracle.size());
    gmean /= std::max<size_t>(1, group_recall.size());
    const double total = (kv + summ) / steps;
    const std::string& policy = runs.front()->policy;
    if (policy == "quest")
      quest_bytes[{std::get<0>(key), std::get<1>(key), std::get<3>(key)}] = total;
    rows.push_back(
        {key,
         {mean, Percentile(recall, 0.05), omean, err_n > 0 ? err / err_n : -1, retr / steps,
          kv / steps / 1024, fresh / steps / 1024, summ / steps / 1024, total / 1024, total,
          ns / steps / 1000, gmean, Percentile(group_recall, 0.05)}});
  }
  for (const auto& [key, v] : rows) {
    const auto q = quest_bytes.find({std::get<0>(key), std::get<1>(key), std::get<3>(key)});
    const std::string vs = q == quest_bytes.end() ? "-" : absl::StrFormat("%.2f", v[9] / q->second);
    absl::PrintF(
        "| %s | %s | %d | 1/%d | %.3f | %.3f | %.3f | %.3f | %.3f | %s | %.3f | %.1f | %.1f | %.1f "
        "| %.1f | %s | %.0f |\n",
        std::get<3>(key), order[std::get<2>(key)], std::get<0>(key), -std::get<1>(key), v[0], v[1],
        v[11], v[12], v[2], v[3] < 0 ? std::string("-") : absl::StrFormat("%.3f", v[3]), v[4], v[5],
        v[6], v[7], v[8], vs, v[10]);
  }
}

int Main(int argc, char** argv) {
  // Parallelism is over layers: FAISS's OpenMP must not oversubscribe the cores. The variable
  // covers threads OpenMP creates later; omp_set_num_threads only the calling thread.
  setenv("OMP_NUM_THREADS", "1", 1);
  CLI::App app{"Measure KV page retrieval policies on attention traces"};
  std::string dir;
  std::string policies = "quest,lserve,louiskv,ann-flat,ann-ivf,ann-hnsw,streaming";
  std::vector<int> pages = {16, 32, 64}, budgets = {32, 16, 8};
  EvalOptions eo;
  int threads = 2;
  bool per_layer = false;
  std::string reduce = "sum";
  app.add_option("--traces", dir, "trace directory (doc*_L*_{q,k,v}.npy)")->required();
  app.add_option("--policies", policies,
                 "comma list of oracle, quest, lserve, louiskv, ann-flat, ann-ivf, ann-hnsw, "
                 "streaming");
  app.add_option("--page-sizes", pages, "tokens per page")->delimiter(',');
  app.add_option("--budgets", budgets, "budget denominators: 16 = 1/16 of the context")
      ->delimiter(',');
  app.add_option("--steps", eo.max_steps, "decode steps to replay (0 = all queries)");
  app.add_option("--stride", eo.stride, "measure attention every N-th step")
      ->check(CLI::PositiveNumber);
  app.add_option("--threads", threads, "layers evaluated in parallel")->check(CLI::PositiveNumber);
  app.add_option("--per-layer", per_layer, "print one row per (doc, layer) too");
  app.add_option("--sink-pages", eo.base.sink_pages, "always-kept pages at the start");
  app.add_option("--window-pages", eo.base.window_pages, "always-kept pages at the end");
  app.add_option("--reuse", eo.base.reuse_steps, "lserve: steps one selection serves");
  app.add_option("--louis-rate", eo.louis_rate, "louiskv: calibrated retrievals per token");
  app.add_option("--louis-threshold", eo.louis_threshold,
                 "louiskv: fixed threshold (skips calibration)");
  app.add_option("--calib-steps", eo.calib_steps, "louiskv: queries used for calibration");
  app.add_option("--cluster-tokens", eo.base.cluster_tokens, "louiskv: mean tokens per cluster");
  app.add_option("--cluster-window", eo.base.cluster_window_tokens,
                 "louiskv: cluster the prompt in windows of this many tokens (0: whole prompt)");
  app.add_option("--resident-factor", eo.base.resident_factor,
                 "louiskv: pages fetched per retrieval, as a multiple of the budget");
  app.add_option("--kmeans-iters", eo.base.kmeans_iters, "louiskv: Lloyd iterations");
  app.add_flag("--trigger-late", eo.base.trigger_late,
               "louiskv: the trigger sees each query a step late (as a device caller reads it)");
  app.add_flag("--retrieve-late", eo.base.retrieve_late,
               "louiskv with --trigger-late: a retrieval takes effect a step after the trigger "
               "fires (ranked with that step's query), so no step after the first needs its "
               "query on time");
  app.add_option("--rescore-factor", eo.base.rescore_factor,
                 "louiskv: pages rescored exactly each step, as a multiple of the free budget "
                 "(<= 1: off)");
  app.add_option("--coverage-threshold", eo.base.coverage_threshold,
                 "louiskv: also retrieve when the resident pages' estimated mass share drops "
                 "below this (0: off)");
  app.add_option("--ivf-nprobe", eo.base.ivf_nprobe, "ann-ivf: lists probed");
  app.add_option("--hnsw-ef", eo.base.hnsw_ef_search, "ann-hnsw: efSearch");
  app.add_option("--group-reduce", reduce, "max or sum over a GQA group's query heads");
  CLI11_PARSE(app, argc, argv);

  std::vector<std::string> order;
  for (const std::string& name :
       std::vector<std::string>(absl::StrSplit(policies, ',', absl::SkipEmpty()))) {
    auto spec = ParsePolicySpec(name);
    if (!spec.ok()) {
      std::fprintf(stderr, "%s\n", std::string(spec.status().message()).c_str());
      return 2;
    }
    eo.policies.push_back(*spec);
    order.push_back(name);
  }
  if (reduce != "max" && reduce != "sum") {
    std::fprintf(stderr, "--group-reduce must be max or sum\n");
    return 2;
  }
  eo.base.group_reduce =
      reduce == "max" ? retriever::GroupReduce::kMax : retriever::GroupReduce::kSum;
  eo.page_sizes = pages;
  eo.budget_denominators = budgets;
  auto files = FindTraces(dir);
  if (!files.ok()) {
    std::fprintf(stderr, "%s\n", std::string(files.status().message()).c_str());
    return 1;
  }
  std::mutex mu;
  std::vector<ConfigStats> all;
  std::vector<std::string> errors;
  size_t next = 0;
  auto worker = [&] {
    omp_set_num_threads(1);
    for (;;) {
      size_t i;
      {
        std::lock_guard<std::mutex> lock(mu);
        if (next >= files->size()) return;
        i = next++;
      }
      const TraceFiles& f = (*files)[i];
      auto trace = LoadTrace(f);
      absl::StatusOr<std::vector<ConfigStats>> stats =
          trace.ok() ? EvaluateLayer(*trace, eo) : trace.status();
      std::lock_guard<std::mutex> lock(mu);
      if (!stats.ok()) {
        errors.push_back(
            absl::StrFormat("doc %s L%02d: %s", f.doc, f.layer, stats.status().message()));
        continue;
      }
      std::fprintf(stderr, "done: doc %s layer %d (%s V)\n", f.doc.c_str(), f.layer,
                   f.v_path.empty() ? "without" : "with");
      for (ConfigStats& s : *stats) {
        if (s.policy == "louiskv") {
          std::fprintf(stderr, "  louiskv threshold %.4f\n", s.threshold);
          break;
        }
      }
      all.insert(all.end(), stats->begin(), stats->end());
    }
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(worker);
  for (auto& t : pool) t.join();
  for (const std::string& e : errors) std::fprintf(stderr, "error: %s\n", e.c_str());
  if (all.empty()) return 1;
  std::printf("traces: %s (%zu doc-layer pairs), steps %s, stride %d\n\n", dir.c_str(),
              files->size(), eo.max_steps > 0 ? std::to_string(eo.max_steps).c_str() : "all",
              eo.stride);
  PrintTable(all, order, false);
  if (per_layer) {
    std::printf("\n");
    PrintTable(all, order, true);
  }
  return errors.empty() ? 0 : 1;
}

}  // namespace
}  // namespace pagoda::bench

int main(int argc, char** argv) { return pagoda::bench::Main(argc, argv); }
