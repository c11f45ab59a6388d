// prefill_eval: output error of block-sparse prefill attention against dense causal attention on
// attention traces, for shares of streaming heads with and without page selection for the dense
// heads.
//
//   prefill_eval --traces DIR [--shares 0,0.25,0.5] [--select 0,0.125] [--chunk 128]
//                [--sink 64] [--window 256] [--threads 2]
//
// Each (doc, layer) trace's N queries (the last N positions) are prefilled through the kernels'
// CPU reference in chunks of --chunk queries, each chunk attending causally over everything
// before it. Streaming heads: per layer, the given share of KV heads with the lowest streaming
// output error measured on the OTHER documents' traces of that layer (all their queries;
// calibration and evaluation never share a document; with a single document, the first half of
// its queries calibrate and the second half is reported). Page selection: dense heads attend
// their chunk plus ceil(select * context pages) context pages per chunk (first page, last 2,
// then Quest-estimated mass; see prefill_trace.h). Reported per configuration: the mean and p95
// over queries of the layer output error |o - o_dense| / |o_dense| (all query heads), per layer
// and pooled, and the attended keys and reference time as ratios of the dense run.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "prefill_trace.h"
#include "streaming_heads.h"

namespace pagoda::bench {
namespace {

std::vector<double> ParseList(const std::string& s) {
  std::vector<double> v;
  for (absl::string_view x : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    double d = 0;
    if (absl::SimpleAtod(x, &d)) v.push_back(d);
  }
  return v;
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  const size_t k = static_cast<size_t>(q * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

int Main(int argc, char** argv) {
  CLI::App app{"Block-sparse prefill error vs dense causal attention on attention traces"};
  std::string dir, shares_arg = "0,0.25,0.5", select_arg = "0,0.125";
  int sink = 64, window = 256, page_size = 16, threads = 2;
  int64_t chunk = 128;
  app.add_option("--traces", dir, "trace directory")->required();
  app.add_option("--shares", shares_arg, "shares of streaming heads per layer");
  app.add_option("--select", select_arg, "context page shares for dense heads (0: all pages)");
  app.add_option("--chunk", chunk, "queries per prefill call");
  app.add_option("--sink", sink, "sink tokens of a streaming head");
  app.add_option("--window", window, "local window tokens of a streaming head");
  app.add_option("--page-size", page_size, "tokens per KV page");
  app.add_option("--threads", threads, "traces run in parallel");
  CLI11_PARSE(app, argc, argv);
  const std::vector<double> shares = ParseList(shares_arg), selects = ParseList(select_arg);

  const auto t0 = std::chrono::steady_clock::now();
  auto prefilled = PrefillTraces(dir, page_size, sink, window, threads);
  if (!prefilled.ok()) {
    std::fprintf(stderr, "%s\n", prefilled.status().ToString().c_str());
    return 1;
  }
  const std::vector<TraceRuns>& runs = *prefilled;
  std::set<std::string> docs;
  for (const TraceRuns& r : runs) docs.insert(r.doc());
  const bool cross_doc = docs.size() > 1;

  struct Config {
    double share, select;
  };
  std::vector<Config> configs;
  for (double sel : selects) {
    for (double sh : shares) configs.push_back({sh, sel});
  }
  // results[config][trace]: per-query errors over the evaluated queries, keys, seconds.
  struct Result {
    std::vector<double> err;
    double key_ratio = 0, time_ratio = 0;
    std::vector<uint8_t> flags;
  };
  std::vector<std::vector<Result>> results(configs.size(), std::vector<Result>(runs.size()));
  absl::Status status = ParallelFor(runs.size(), threads, [&](size_t t) -> absl::Status {
    const TraceRuns& r = runs[t];
    // Calibration: the other documents' traces of this layer, or this trace's first half.
    std::vector<HeadStats> calib;
    int64_t q0 = 0;
    if (cross_doc) {
      for (const TraceRuns& o : runs) {
        if (o.doc() != r.doc() && o.layer() == r.layer()) {
          AccumulateHeadStats(o.dense, o.streaming, o.kv_heads(), 0, o.queries(), &calib);
        }
      }
    } else {
      q0 = r.queries() / 2;
      AccumulateHeadStats(r.dense, r.streaming, r.kv_heads(), 0, q0, &calib);
    }
    if (calib.empty()) calib.resize(r.kv_heads());  // no other doc of this layer: ranked by index
    // The dense baseline's time, measured here at the same chunking.
    PrefillMask dense;
    dense.chunk = chunk;
    const auto d0 = std::chrono::steady_clock::now();
    auto base = r.trace->Run(dense, q0, r.queries());
    if (!base.ok()) return base.status();
    const double dense_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - d0).count();
    for (size_t c = 0; c < configs.size(); ++c) {
      PrefillMask m;
      m.chunk = chunk;
      m.sink_tokens = sink;
      m.window_tokens = window;
      m.streaming = StreamByFraction(calib, configs[c].share);
      m.select_fraction = configs[c].select;
      const auto c0 = std::chrono::steady_clock::now();
      auto run = r.trace->Run(m, q0, r.queries());
      if (!run.ok()) return run.status();
      Result& res = results[c][t];
      res.time_ratio =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - c0).count() / dense_s;
      res.key_ratio = static_cast<double>(run->keys_attended) /
                      static_cast<double>(std::max<int64_t>(1, base->keys_attended));
      res.err = QueryErrors(*base, *run, 0, run->q_heads);
      res.flags = m.streaming;
    }
    std::fprintf(stderr, "measured doc %s L%02d\n", r.doc().c_str(), r.layer());
    return absl::OkStatus();
  });
  if (!status.ok()) {
    std::fprintf(stderr, "%s\n", status.ToString().c_str());
    return 1;
  }
  std::map<int, int> layer_index;
  for (const TraceRuns& r : runs) layer_index.emplace(r.layer(), 0);

  absl::PrintF("## prefill_eval: sink %d, window %d, page %d, chunk %lld queries, %s\n\n", sink,
               window, page_size, static_cast<long long>(chunk),
               cross_doc ? "streaming heads chosen on the other documents (all queries), "
                           "reported on all queries of each trace"
                         : "one document: heads chosen on the first half of its queries, "
                           "reported on the second half");
  absl::PrintF("| streaming share | page selection | streaming heads (doc/layer: heads) |");
  for (const auto& [layer, i] : layer_index) absl::PrintF(" L%02d err mean |", layer);
  absl::PrintF(" err mean | err p95 | keys vs dense | ref time vs dense |\n|---|---|---|");
  for (size_t i = 0; i < layer_index.size(); ++i) absl::PrintF("---|");
  absl::PrintF("---|---|---|---|\n");
  for (size_t c = 0; c < configs.size(); ++c) {
    std::vector<double> all;
    std::map<int, std::vector<double>> per_layer;
    double keys = 0, time = 0;
    std::string heads;
    for (size_t t = 0; t < runs.size(); ++t) {
      const Result& res = results[c][t];
      all.insert(all.end(), res.err.begin(), res.err.end());
      auto& pl = per_layer[runs[t].layer()];
      pl.insert(pl.end(), res.err.begin(), res.err.end());
      keys += res.key_ratio;
      time += res.time_ratio;
      std::string hs;
      for (size_t h = 0; h < res.flags.size(); ++h) {
        if (res.flags[h]) absl::StrAppend(&hs, hs.empty() ? "" : ",", h);
      }
      absl::StrAppend(&heads, heads.empty() ? "" : " ", runs[t].doc().substr(0, 4), "/",
                      runs[t].layer(), ":", hs.empty() ? "-" : hs);
    }
    double mean = 0;
    for (double e : all) mean += e;
    mean /= std::max<size_t>(1, all.size());
    absl::PrintF("| %.0f%% | %s | %s |", 100 * configs[c].share,
                 configs[c].select > 0 ? absl::StrFormat("%.4g of context pages", configs[c].select)
                                       : std::string("none (all keys)"),
                 heads);
    for (const auto& [layer, v] : per_layer) {
      double m = 0;
      for (double e : v) m += e;
      absl::PrintF(" %.4f |", m / std::max<size_t>(1, v.size()));
    }
    absl::PrintF(" %.4f | %.4f | %.3f | %.2f |\n", mean, Percentile(all, 0.95),
                 keys / static_cast<double>(runs.size()), time / static_cast<double>(runs.size()));
  }
  absl::PrintF("\n%zu traces, %.1f s\n", runs.size(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return 0;
}

}  // namespace
}  // namespace pagoda::bench

int main(int argc, char** argv) { return pagoda::bench::Main(argc, argv); }
