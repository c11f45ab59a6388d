// CI-sized form of the prefill measurements: synthetic traces where two KV heads are local (their
// queries look at the recent keys) and two look at one planted far-away key.
#include "prefill_trace.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "npy.h"
#include "pagoda/kernels/dtype.h"
#include "pagoda/retriever/streaming_profile.h"
#include "streaming_heads.h"

namespace pagoda::bench {
namespace {

namespace fs = std::filesystem;

constexpr int kKv = 4, kGroup = 2, kDim = 16, kT = 640, kN = 128, kPlanted = 200;
constexpr int kSink = 4, kWindow = 64;

uint16_t Half(float x) { return kernels::FromFloat(x, kernels::DType::kFloat16); }

// Heads 0, 1: keys and queries carry the position as an angle (q.k peaks at the query's own
// position and falls off within ~32 tokens). Heads 2, 3: every query matches key kPlanted.
void WriteDoc(const fs::path& dir, const std::string& doc, int seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> noise(0.f, 0.5f);
  const double w = M_PI / kT;
  std::vector<uint16_t> k(kKv * kT * kDim), v(kKv * kT * kDim), q(kKv * kGroup * kN * kDim);
  for (int h = 0; h < kKv; ++h) {
    for (int t = 0; t < kT; ++t) {
      for (int d = 0; d < kDim; ++d) {
        float x = noise(rng);
        if (h < 2 && d == 0) x = 40.f * static_cast<float>(std::cos(w * t));
        if (h < 2 && d == 1) x = 40.f * static_cast<float>(std::sin(w * t));
        if (h >= 2 && d == 2) x = t == kPlanted ? 40.f : 0.f;
        k[(h * kT + t) * kDim + d] = Half(x);
        v[(h * kT + t) * kDim + d] = Half(noise(rng) * 2);
      }
    }
  }
  for (int hq = 0; hq < kKv * kGroup; ++hq) {
    const int h = hq / kGroup;
    for (int i = 0; i < kN; ++i) {
      const int t = kT - kN + i;
      for (int d = 0; d < kDim; ++d) {
        float x = 0.1f * noise(rng);
        if (h < 2 && d == 0) x = 40.f * static_cast<float>(std::cos(w * t));
        if (h < 2 && d == 1) x = 40.f * static_cast<float>(std::sin(w * t));
        if (h >= 2 && d == 2) x = 40.f;
        q[(hq * kN + i) * kDim + d] = Half(x);
      }
    }
  }
  const std::string stem = (dir / ("doc" + doc + "_L03")).string();
  ASSERT_TRUE(
      WriteNpy(stem + "_q.npy", "<f2", {kKv * kGroup, kN, kDim}, q.data(), q.size() * 2).ok());
  ASSERT_TRUE(WriteNpy(stem + "_k.npy", "<f2", {kKv, kT, kDim}, k.data(), k.size() * 2).ok());
  ASSERT_TRUE(WriteNpy(stem + "_v.npy", "<f2", {kKv, kT, kDim}, v.data(), v.size() * 2).ok());
}

class PrefillTraceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ =
        new fs::path(fs::temp_directory_path() / ("prefill_trace_" + std::to_string(::getpid())));
    fs::create_directories(*dir_);
    WriteDoc(*dir_, "alpha", 1);
    WriteDoc(*dir_, "beta", 2);
    auto runs = PrefillTraces(dir_->string(), 16, kSink, kWindow, 2);
    ASSERT_TRUE(runs.ok()) << runs.status();
    runs_ = new std::vector<TraceRuns>(std::move(*runs));
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
    delete runs_;
  }
  static fs::path* dir_;
  static std::vector<TraceRuns>* runs_;
};
fs::path* PrefillTraceTest::dir_ = nullptr;
std::vector<TraceRuns>* PrefillTraceTest::runs_ = nullptr;

double Mean(const std::vector<double>& v) {
  return std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

TEST_F(PrefillTraceTest, DenseRunIsCausalAttention) {
  const TraceRuns& r = (*runs_)[0];
  ASSERT_EQ(runs_->size(), 2u);
  EXPECT_EQ(r.doc(), "alpha");
  const TraceLayer& t = r.trace->layer();
  // Float64 attention of a few (query, head) pairs straight from the trace arrays.
  for (int i : {0, 37, kN - 1}) {
    for (int hq : {0, 5}) {
      const int h = hq / kGroup, pos = kT - kN + i;
      std::vector<double> logit(pos + 1);
      double m = -1e300;
      for (int j = 0; j <= pos; ++j) {
        double s = 0;
        for (int d = 0; d < kDim; ++d) {
          s += kernels::HalfToFloat(t.q[(hq * kN + i) * kDim + d]) *
               kernels::HalfToFloat(t.k[(h * kT + j) * kDim + d]);
        }
        logit[j] = s / std::sqrt(double{kDim});
        m = std::max(m, logit[j]);
      }
      double sum = 0;
      for (double& l : logit) sum += (l = std::exp(l - m));
      for (int d = 0; d < kDim; ++d) {
        double o = 0;
        for (int j = 0; j <= pos; ++j) {
          o += logit[j] * kernels::HalfToFloat(t.v[(h * kT + j) * kDim + d]);
        }
        o /= sum;
        EXPECT_NEAR(r.dense.o[(i * kKv * kGroup + hq) * kDim + d], o, 2e-3 * (1 + std::fabs(o)));
      }
    }
  }
}

TEST_F(PrefillTraceTest, LocalHeadsStreamAndFarHeadsDoNot) {
  std::vector<HeadStats> stats;
  for (const TraceRuns& r : *runs_) {
    AccumulateHeadStats(r.dense, r.streaming, kKv, 0, kN, &stats);
  }
  ASSERT_EQ(stats.size(), size_t{kKv});
  for (int h = 0; h < 2; ++h) {
    EXPECT_GT(stats[h].kept_mass(), 0.99) << h;
    EXPECT_LT(stats[h].output_error(), 0.02) << h;
  }
  for (int h = 2; h < 4; ++h) {
    EXPECT_LT(stats[h].kept_mass(), 0.01) << h;
    EXPECT_GT(stats[h].output_error(), 0.5) << h;
  }
  EXPECT_EQ(StreamByError(stats, 0.05), (std::vector<uint8_t>{1, 1, 0, 0}));
  EXPECT_EQ(StreamByFraction(stats, 0.5), (std::vector<uint8_t>{1, 1, 0, 0}));
  EXPECT_EQ(StreamByFraction(stats, 0.25), (std::vector<uint8_t>{1, 0, 0, 0}));
  EXPECT_EQ(StreamByFraction(stats, 0), (std::vector<uint8_t>{0, 0, 0, 0}));
  // The chosen heads make a profile that loads back with the same flags.
  std::vector<retriever::StreamingHeadInfo> heads;
  const auto flags = StreamByError(stats, 0.05);
  for (int h = 0; h < kKv; ++h) {
    heads.push_back({3, h, flags[h] != 0, static_cast<float>(stats[h].kept_mass()),
                     static_cast<float>(stats[h].output_error())});
  }
  auto profile = retriever::MakeStreamingProfile(12, kKv, kSink, kWindow, heads);
  ASSERT_TRUE(profile.ok()) << profile.status();
  auto back = retriever::ParseStreamingProfile(retriever::FormatStreamingProfile(*profile));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->is_streaming(3, 0));
  EXPECT_TRUE(back->is_streaming(3, 1));
  EXPECT_FALSE(back->is_streaming(3, 2));
  EXPECT_FALSE(back->is_streaming(4, 0));
}

// MixedErrors (streaming outputs spliced into the dense run) equals a real run with that mask,
// and the layer error grows with the share of streaming heads as the calibration orders them.
TEST_F(PrefillTraceTest, MixedErrorsEqualRealMixedRuns) {
  const TraceRuns& r = (*runs_)[1];
  for (const std::vector<uint8_t>& flags :
       {std::vector<uint8_t>{0, 0, 0, 0}, std::vector<uint8_t>{1, 1, 0, 0},
        std::vector<uint8_t>{1, 1, 1, 0}}) {
    PrefillMask m;
    m.streaming = flags;
    m.sink_tokens = kSink;
    m.window_tokens = kWindow;
    m.chunk = 48;  // chunked: must not change a mask without selection
    auto run = r.trace->Run(m, 0, kN);
    ASSERT_TRUE(run.ok()) << run.status();
    const auto real = QueryErrors(r.dense, *run, 0, kKv * kGroup);
    const auto mixed = MixedErrors(r.dense, r.streaming, flags, 0, kN);
    for (int i = 0; i < kN; ++i) ASSERT_NEAR(real[i], mixed[i], 1e-12) << i;
    if (flags[2] == 0) {
      EXPECT_LT(Mean(real), 0.02);
    } else {
      EXPECT_GT(Mean(real), 0.2);
    }
  }
}

TEST_F(PrefillTraceTest, QuestSelectionFindsThePlantedPage) {
  const TraceRuns& r = (*runs_)[0];
  PrefillMask m;
  m.chunk = 32;
  m.select_fraction = 1.0;  // every context page: dense attention, bit for bit
  auto all = r.trace->Run(m, 0, kN);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->o, r.dense.o);
  EXPECT_EQ(all->keys_attended, r.dense.keys_attended);
  m.select_fraction = 0.1;  // 3 of ~30 context pages: the sink page, the last 2... and page 12?
  m.keep_recent = 1;
  auto some = r.trace->Run(m, 0, kN);
  ASSERT_TRUE(some.ok());
  const double far_err = Mean(QueryErrors(r.dense, *some, 2 * kGroup, 4 * kGroup));
  EXPECT_LT(far_err, 0.02) << "the planted key's page was not selected";
  EXPECT_LT(some->keys_attended, r.dense.keys_attended / 3);
  m.keep_recent = 2;  // now the budget holds only the sink and the recent pages
  m.select_fraction = 0.05;
  auto none = r.trace->Run(m, 0, kN);
  ASSERT_TRUE(none.ok());
  EXPECT_GT(Mean(QueryErrors(r.dense, *none, 2 * kGroup, 4 * kGroup)), 0.5);
}

TEST_F(PrefillTraceTest, BadRunsAreRejected) {
  const TraceRuns& r = (*runs_)[0];
  PrefillMask m;
  EXPECT_FALSE(r.trace->Run(m, 0, kN + 1).ok());
  EXPECT_FALSE(r.trace->Run(m, 5, 4).ok());
  m.streaming = {1, 0};
  EXPECT_FALSE(r.trace->Run(m, 0, kN).ok());
  m.streaming.clear();
  m.chunk = 0;
  EXPECT_FALSE(r.trace->Run(m, 0, kN).ok());
  TraceLayer no_v = r.trace->layer();
  no_v.v.clear();
  EXPECT_FALSE(TracePrefill::Create(no_v).ok());
}

}  // namespace
}  // namespace pagoda::bench
