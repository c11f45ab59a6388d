// streaming_profile: finds the streaming heads of a model on attention traces and writes a
// streaming-head profile (pagoda/retriever/streaming_profile.h).
//
//   streaming_profile --traces DIR --out PROFILE [--sink 64] [--window 256]
//                     [--calib-docs code_dev] [--calib-queries 512]
//                     [--target-error 0.05 | --fraction 0.5] [--num-layers 12] [--threads 2]
//
// Every (doc, layer) trace with V is prefilled twice through the kernels' CPU reference (its N
// queries attend causally over the whole context): dense, and with every KV head streaming (first
// --sink and last --window tokens before each query). Per (layer, KV head) that gives the
// attention mass sink + window keep and the output error of streaming the head.
// Calibration data (chooses the heads): the --calib-docs documents, queries [0, calib-queries).
// Evaluation data (reported): the other documents, queries [calib-queries, N) (the calibration
// documents' later queries when there is no other document). The profile marks a head streaming
// when its calibration output error is at most --target-error (or, with --fraction, the given
// share of each layer's heads, lowest error first). Prints, per layer and pooled, the share of
// heads that stream at several error targets, the evaluation error that gives, and the error at
// LServe's 50% (and 25%) streaming heads.
#include <algorithm>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "pagoda/retriever/streaming_profile.h"
#include "prefill_trace.h"
#include "streaming_heads.h"
#include "trace.h"

namespace pagoda::bench {
namespace {

double Mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

int Main(int argc, char** argv) {
  CLI::App app{"Find streaming heads on attention traces and write a streaming-head profile"};
  std::string dir, out, calib_docs_arg, targets_arg = "0.02,0.05,0.1,0.2,0.3,0.4,0.5";
  int sink = 64, window = 256, page_size = 16, threads = 2, num_layers = 0;
  int64_t calib_queries = -1;
  double target_error = 0.05, fraction = -1;
  app.add_option("--traces", dir, "trace directory")->required();
  app.add_option("--out", out, "profile file to write")->required();
  app.add_option("--sink", sink, "sink tokens of a streaming head");
  app.add_option("--window", window, "local window tokens of a streaming head");
  app.add_option("--page-size", page_size, "tokens per KV page of the prefill runs");
  app.add_option("--calib-docs", calib_docs_arg,
                 "comma-separated calibration documents (default: the first document)");
  app.add_option("--calib-queries", calib_queries,
                 "calibration uses queries [0, this), evaluation the rest (default N/2)");
  app.add_option("--target-error", target_error, "largest calibration output error to stream");
  app.add_option("--fraction", fraction, "stream this share of each layer's heads instead");
  app.add_option("--targets", targets_arg, "error targets of the printed sweep");
  app.add_option("--num-layers", num_layers, "model layers (default: largest layer seen + 1)");
  app.add_option("--threads", threads, "traces prefilled in parallel");
  CLI11_PARSE(app, argc, argv);

  auto prefilled = PrefillTraces(dir, page_size, sink, window, threads);
  if (!prefilled.ok()) {
    std::fprintf(stderr, "%s\n", prefilled.status().ToString().c_str());
    return 1;
  }
  const std::vector<TraceRuns>& runs = *prefilled;

  // Calibration / evaluation split.
  std::set<std::string> docs, calib;
  for (const TraceRuns& r : runs) docs.insert(r.doc());
  for (absl::string_view d : absl::StrSplit(calib_docs_arg, ',', absl::SkipEmpty())) {
    calib.insert(std::string(d));
  }
  if (calib.empty()) calib.insert(*docs.begin());
  std::set<std::string> eval;
  for (const std::string& d : docs) {
    if (!calib.count(d)) eval.insert(d);
  }
  const bool eval_same_docs = eval.empty();
  if (eval_same_docs) eval = calib;
  const int kv_heads = runs.front().kv_heads();
  std::map<int, std::vector<HeadStats>> calib_stats, eval_stats;
  auto calib_end = [&](const TraceRuns& r) {
    return calib_queries < 0 ? r.queries() / 2 : std::min(calib_queries, r.queries());
  };
  for (const TraceRuns& r : runs) {
    if (r.kv_heads() != kv_heads) {
      std::fprintf(stderr, "traces disagree on KV heads (%d vs %d)\n", r.kv_heads(), kv_heads);
      return 1;
    }
    if (calib.count(r.doc())) {
      AccumulateHeadStats(r.dense, r.streaming, kv_heads, 0, calib_end(r), &calib_stats[r.layer()]);
    }
    if (eval.count(r.doc())) {
      AccumulateHeadStats(r.dense, r.streaming, kv_heads, calib_end(r), r.queries(),
                          &eval_stats[r.layer()]);
    }
  }
  if (calib_stats.empty()) {
    std::fprintf(stderr, "no trace of the calibration documents\n");
    return 1;
  }
  auto choose = [&](int layer, double err, double frac) {
    return frac >= 0 ? StreamByFraction(calib_stats[layer], frac)
                     : StreamByError(calib_stats[layer], err);
  };
  // Evaluation: mean layer output error over the evaluation queries (per layer, and pooled) and
  // the mean evaluation head error of the streaming heads.
  struct EvalResult {
    std::map<int, double> layer_err;
    double pooled_err = 0, head_err = 0;
    std::map<int, int> streaming;
    int total_streaming = 0, total_heads = 0;
  };
  auto evaluate = [&](double err, double frac) {
    EvalResult e;
    std::map<int, std::vector<double>> per_layer;
    std::vector<double> pooled, heads;
    for (const auto& [layer, stats] : calib_stats) {
      const auto flags = choose(layer, err, frac);
      int n = 0;
      for (size_t h = 0; h < flags.size(); ++h) {
        n += flags[h];
        if (flags[h] && eval_stats.count(layer))
          heads.push_back(eval_stats[layer][h].output_error());
      }
      e.streaming[layer] = n;
      e.total_streaming += n;
      e.total_heads += static_cast<int>(flags.size());
    }
    for (const TraceRuns& r : runs) {
      if (!eval.count(r.doc()) || !calib_stats.count(r.layer())) continue;
      const auto q = MixedErrors(r.dense, r.streaming, choose(r.layer(), err, frac), calib_end(r),
                                 r.queries());
      per_layer[r.layer()].insert(per_layer[r.layer()].end(), q.begin(), q.end());
      pooled.insert(pooled.end(), q.begin(), q.end());
    }
    for (const auto& [layer, v] : per_layer) e.layer_err[layer] = Mean(v);
    e.pooled_err = Mean(pooled);
    e.head_err = Mean(heads);
    return e;
  };

  absl::PrintF("## streaming_profile: sink %d, window %d, page %d\n\n", sink, window, page_size);
  absl::PrintF("- calibration (chooses heads): docs %s, queries [0, %s)\n",
               absl::StrJoin(calib, ","), calib_queries < 0 ? "N/2" : absl::StrCat(calib_queries));
  absl::PrintF("- evaluation (reported): docs %s, queries [%s, N)%s\n\n", absl::StrJoin(eval, ","),
               calib_queries < 0 ? "N/2" : absl::StrCat(calib_queries),
               eval_same_docs ? " (no other document: same documents, later positions)" : "");
  absl::PrintF(
      "| layer | KV head | calib kept mass | calib head err | eval kept mass | eval head err |\n"
      "|---|---|---|---|---|---|\n");
  for (const auto& [layer, stats] : calib_stats) {
    for (int h = 0; h < kv_heads; ++h) {
      const bool ev = eval_stats.count(layer) > 0;
      absl::PrintF("| %d | %d | %.3f | %.3f | %s | %s |\n", layer, h, stats[h].kept_mass(),
                   stats[h].output_error(),
                   ev ? absl::StrFormat("%.3f", eval_stats[layer][h].kept_mass()) : "-",
                   ev ? absl::StrFormat("%.3f", eval_stats[layer][h].output_error()) : "-");
    }
  }
  absl::PrintF(
      "\nStreaming heads chosen on the calibration data by head error <= target, and the "
      "evaluation layer output error (all query heads, vs dense) that gives:\n\n| target head "
      "err |");
  for (const auto& [layer, s] : calib_stats)
    absl::PrintF(" L%02d streaming | L%02d err |", layer, layer);
  absl::PrintF(" pooled streaming | pooled err | eval head err of streaming heads |\n|---|");
  for (size_t i = 0; i < calib_stats.size(); ++i) absl::PrintF("---|---|");
  absl::PrintF("---|---|---|\n");
  auto print_row = [&](const std::string& label, const EvalResult& e) {
    absl::PrintF("| %s |", label);
    for (const auto& [layer, s] : calib_stats) {
      absl::PrintF(" %d/%d | %.4f |", e.streaming.at(layer), kv_heads,
                   e.layer_err.count(layer) ? e.layer_err.at(layer) : -1.0);
    }
    absl::PrintF(" %.2f | %.4f | %.4f |\n",
                 static_cast<double>(e.total_streaming) / std::max(1, e.total_heads), e.pooled_err,
                 e.head_err);
  };
  for (absl::string_view t : absl::StrSplit(targets_arg, ',', absl::SkipEmpty())) {
    double target = 0;
    if (!absl::SimpleAtod(t, &target)) continue;
    print_row(std::string(t), evaluate(target, -1));
  }
  absl::PrintF(
      "\nA fixed share of streaming heads per layer (lowest calibration error first):\n\n"
      "| share |");
  for (const auto& [layer, s] : calib_stats)
    absl::PrintF(" L%02d streaming | L%02d err |", layer, layer);
  absl::PrintF(" pooled streaming | pooled err | eval head err of streaming heads |\n|---|");
  for (size_t i = 0; i < calib_stats.size(); ++i) absl::PrintF("---|---|");
  absl::PrintF("---|---|---|\n");
  print_row("25%", evaluate(0, 0.25));
  print_row("50% (LServe's share)", evaluate(0, 0.5));

  // The profile: the chosen heads with their calibration numbers.
  int layers = num_layers;
  for (const auto& [layer, s] : calib_stats) layers = std::max(layers, layer + 1);
  std::vector<retriever::StreamingHeadInfo> heads;
  for (const auto& [layer, stats] : calib_stats) {
    const auto flags = choose(layer, target_error, fraction);
    for (int h = 0; h < kv_heads; ++h) {
      heads.push_back({layer, h, flags[h] != 0, static_cast<float>(stats[h].kept_mass()),
                       static_cast<float>(stats[h].output_error())});
    }
  }
  auto profile = retriever::MakeStreamingProfile(layers, kv_heads, sink, window, std::move(heads));
  if (!profile.ok()) {
    std::fprintf(stderr, "%s\n", profile.status().ToString().c_str());
    return 1;
  }
  if (absl::Status s = retriever::SaveStreamingProfile(*profile, out); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  absl::PrintF("\nwrote %s: %d of %d heads streaming (%s)\n", out, profile->num_streaming(),
               layers * kv_heads,
               fraction >= 0 ? absl::StrFormat("share %.2f per layer", fraction)
                             : absl::StrFormat("calibration head error <= %g", target_error));
  return 0;
}

}  // namespace
}  // namespace pagoda::bench

int main(int argc, char** argv) { return pagoda::bench::Main(argc, argv); }
