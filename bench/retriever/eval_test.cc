#include "eval.h"

#include <cmath>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "npy.h"
#include "pagoda/kernels/dtype.h"
#include "trace.h"

namespace pagoda::bench {
namespace {

namespace fs = std::filesystem;

uint16_t Half(float x) { return kernels::FromFloat(x, kernels::DType::kFloat16); }

// A small trace in the real format: 2 KV heads, 6 query heads, head_dim 16, 1024 tokens, the
// last 48 queried. Every query looks for one of two planted "facts" (pages 10 and 40).
fs::path WriteTrace(bool with_v) {
  const fs::path dir =
      fs::temp_directory_path() / ("trace_" + std::to_string(::getpid()) + (with_v ? "v" : ""));
  fs::create_directories(dir);
  const int kv = 2, hq = 6, d = 16, T = 1024, N = 48;
  std::mt19937 rng(5);
  std::normal_distribution<float> g(0.f, 0.5f);
  std::vector<uint16_t> k(kv * T * d), v(kv * T * d), q(hq * N * d);
  for (int h = 0; h < kv; ++h) {
    for (int t = 0; t < T; ++t) {
      for (int i = 0; i < d; ++i) {
        float x = g(rng);
        if (t / 16 == 10 && i == 0) x = 8.f;
        if (t / 16 == 40 && i == 1) x = 8.f;
        k[(h * T + t) * d + i] = Half(x);
        v[(h * T + t) * d + i] = Half(g(rng));
      }
    }
  }
  for (int h = 0; h < hq; ++h) {
    for (int s = 0; s < N; ++s) {
      for (int i = 0; i < d; ++i) {
        float x = 0.2f * g(rng);
        if (i == (s < N / 2 ? 0 : 1)) x += 4.f;  // the topic changes half way
        q[(h * N + s) * d + i] = Half(x);
      }
    }
  }
  const std::string stem = (dir / "docsynth_L03").string();
  EXPECT_TRUE(WriteNpy(stem + "_q.npy", "<f2", {hq, N, d}, q.data(), q.size() * 2).ok());
  EXPECT_TRUE(WriteNpy(stem + "_k.npy", "<f2", {kv, T, d}, k.data(), k.size() * 2).ok());
  if (with_v) {
    EXPECT_TRUE(WriteNpy(stem + "_v.npy", "<f2", {kv, T, d}, v.data(), v.size() * 2).ok());
  }
  // A q file without its k is ignored.
  EXPECT_TRUE(
      WriteNpy((dir / "docother_L01_q.npy").string(), "<f2", {hq, N, d}, q.data(), q.size() * 2)
          .ok());
  return dir;
}

TEST(EvalTest, FindsLoadsAndMeasuresASyntheticTrace) {
  const fs::path dir = WriteTrace(true);
  auto files = FindTraces(dir.string());
  ASSERT_TRUE(files.ok()) << files.status();
  ASSERT_EQ(files->size(), 1u);
  EXPECT_EQ((*files)[0].doc, "synth");
  EXPECT_EQ((*files)[0].layer, 3);
  auto trace = LoadTrace((*files)[0]);
  ASSERT_TRUE(trace.ok()) << trace.status();
  EXPECT_EQ(trace->first_query(), 1024 - 48);

  EvalOptions eo;
  for (const char* name : {"oracle", "quest", "lserve", "louiskv", "ann-hnsw", "streaming"}) {
    eo.policies.push_back(*ParsePolicySpec(name));
  }
  eo.page_sizes = {16};
  eo.budget_denominators = {16};
  eo.calib_steps = 48;
  eo.louis_rate = 0.25;
  auto stats = EvaluateLayer(*trace, eo);
  ASSERT_TRUE(stats.ok()) << stats.status();
  ASSERT_EQ(stats->size(), 6u);
  for (const ConfigStats& s : *stats) {
    SCOPED_TRACE(s.policy);
    EXPECT_EQ(s.steps, 48);
    EXPECT_EQ(s.budget_tokens, 64);
    ASSERT_EQ(s.recall.size(), 48u * 6);
    double mean = 0;
    for (float r : s.recall) {
      EXPECT_GT(r, 0.f);
      // Nothing beats the per-head page oracle at equal pages, except token-granular louiskv.
      if (s.policy != "louiskv") {
        EXPECT_LE(r, 1.f + 1e-5f);
      }
      mean += r;
    }
    mean /= s.recall.size();
    // One group-oracle ratio per (step, KV head); the group oracle is the best one page set per
    // KV head can do, so only token-granular louiskv may pass it.
    ASSERT_EQ(s.group_recall.size(), 48u * static_cast<size_t>(trace->kv_heads));
    for (float r : s.group_recall) {
      EXPECT_GT(r, 0.f);
      if (s.policy != "louiskv") {
        EXPECT_LE(r, 1.f + 1e-5f);
      }
    }
    EXPECT_EQ(s.err_n, 48 * 6);
    if (s.policy == "streaming") {
      EXPECT_LT(mean, 0.9);  // the facts are far from the window
      EXPECT_EQ(s.retrievals, 0);
    } else {
      EXPECT_GT(mean, 0.95) << "recall";  // the planted pages are found
      EXPECT_LT(s.err_sum / s.err_n, 0.2);
    }
    if (s.policy == "louiskv") {
      EXPECT_LE(s.retrievals, 48 * 0.25 + 1);
    }
    if (s.policy == "quest") {
      EXPECT_EQ(s.retrievals, 48);
    }
    if (s.policy == "lserve") {
      EXPECT_EQ(s.retrievals, 12);
    }
  }
  fs::remove_all(dir);
}

TEST(EvalTest, WorksWithoutValuesAndRejectsBadTraces) {
  const fs::path dir = WriteTrace(false);
  auto files = FindTraces(dir.string());
  ASSERT_TRUE(files.ok());
  auto trace = LoadTrace((*files)[0]);
  ASSERT_TRUE(trace.ok());
  EXPECT_TRUE(trace->v.empty());
  EvalOptions eo;
  eo.policies.push_back(*ParsePolicySpec("quest"));
  eo.page_sizes = {32};
  eo.budget_denominators = {8};
  eo.max_steps = 5;
  auto stats = EvaluateLayer(*trace, eo);
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ((*stats)[0].err_n, 0);
  EXPECT_EQ((*stats)[0].steps, 5);
  // A k whose head_dim differs from q.
  std::vector<uint16_t> k(2 * 1024 * 8);
  ASSERT_TRUE(
      WriteNpy((dir / "docsynth_L03_k.npy").string(), "<f2", {2, 1024, 8}, k.data(), k.size() * 2)
          .ok());
  EXPECT_EQ(LoadTrace((*files)[0]).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(FindTraces((dir / "missing").string()).ok());
  EXPECT_FALSE(ParsePolicySpec("bogus").ok());
  fs::remove_all(dir);
}

}  // namespace
}  // namespace pagoda::bench
