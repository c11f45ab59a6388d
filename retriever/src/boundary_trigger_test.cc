#include "pagoda/retriever/boundary_trigger.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace pagoda::retriever {
namespace {

std::vector<float> Random(int n, std::mt19937& rng) {
  std::normal_distribution<float> g;
  std::vector<float> v(n);
  for (float& x : v) x = g(rng);
  return v;
}

TEST(BoundaryTriggerTest, FiresFirstThenOnlyOnDrift) {
  std::mt19937 rng(1);
  auto trigger = BoundaryTrigger::Create(2, 8, 0.9f);
  ASSERT_TRUE(trigger.ok());
  const std::vector<float> a = Random(16, rng);
  EXPECT_TRUE(*trigger->Observe(a));  // first query: nothing selected yet
  std::vector<float> close = a;
  for (float& x : close) x *= 3.f;  // same direction, other norm: cosine 1
  EXPECT_FALSE(*trigger->Observe(close));
  EXPECT_NEAR(trigger->last_similarity(), 1.f, 1e-5);
  std::vector<float> flipped = a;
  for (float& x : flipped) x = -x;
  EXPECT_TRUE(*trigger->Observe(flipped));
  EXPECT_NEAR(trigger->last_similarity(), -1.f, 1e-5);
  // The anchor moved to the flipped query.
  EXPECT_FALSE(*trigger->Observe(flipped));
  trigger->Reset();
  EXPECT_TRUE(*trigger->Observe(flipped));
}

TEST(BoundaryTriggerTest, SlowDriftAccumulatesAgainstTheAnchor) {
  // Each step turns by a small angle: consecutive cosines stay high, but the anchor (the query at
  // the last retrieval) falls behind, so the trigger fires periodically.
  auto trigger = BoundaryTrigger::Create(1, 2, std::cos(0.5f));
  ASSERT_TRUE(trigger.ok());
  int fires = 0;
  for (int s = 0; s < 100; ++s) {
    const float angle = 0.1f * s;
    const float q[2] = {std::cos(angle), std::sin(angle)};
    fires += *trigger->Observe(q) ? 1 : 0;
  }
  EXPECT_GE(fires, 15);  // ~ every 5-6 steps over 10 radians
  EXPECT_LE(fires, 25);
}

TEST(BoundaryTriggerTest, RejectsBadInput) {
  EXPECT_FALSE(BoundaryTrigger::Create(0, 8, 0.5f).ok());
  EXPECT_FALSE(BoundaryTrigger::Create(2, 8, 1.5f).ok());
  auto trigger = BoundaryTrigger::Create(2, 4, 0.5f);
  ASSERT_TRUE(trigger.ok());
  std::vector<float> wrong(7, 1.f);
  EXPECT_EQ(trigger->Observe(wrong).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<float> nan(8, 1.f);
  nan[3] = std::nanf("");
  EXPECT_EQ(trigger->Observe(nan).status().code(), absl::StatusCode::kInvalidArgument);
  // Rejected input did not become the anchor: the next good query still fires first.
  std::vector<float> ok(8, 1.f);
  EXPECT_TRUE(*trigger->Observe(ok));
}

TEST(BoundaryTriggerTest, CalibrationHitsTheTargetRate) {
  // Random-walk queries: the retrieval count must come out at (not above) the target.
  std::mt19937 rng(7);
  const int steps = 400, heads = 3, dim = 16;
  std::vector<float> queries(steps * heads * dim);
  std::vector<float> cur = Random(heads * dim, rng);
  std::normal_distribution<float> step(0.f, 0.25f);
  for (int s = 0; s < steps; ++s) {
    for (int i = 0; i < heads * dim; ++i) {
      cur[i] += step(rng);
      queries[s * heads * dim + i] = cur[i];
    }
  }
  for (double target : {0.05, 0.25, 0.5}) {
    auto tau = CalibrateBoundaryThreshold(queries, steps, heads, dim, target);
    ASSERT_TRUE(tau.ok()) << tau.status();
    auto trigger = BoundaryTrigger::Create(heads, dim, *tau);
    int fires = 0;
    for (int s = 0; s < steps; ++s) {
      fires += *trigger->Observe(absl::MakeConstSpan(queries).subspan(s * heads * dim, heads * dim))
                   ? 1
                   : 0;
    }
    EXPECT_LE(fires, target * steps) << target;
    EXPECT_GE(fires, 0.7 * target * steps) << target;  // spends most of the allowed retrievals
  }
  EXPECT_FALSE(CalibrateBoundaryThreshold(queries, steps, heads, dim, 0.0).ok());
  EXPECT_FALSE(CalibrateBoundaryThreshold(queries, steps + 1, heads, dim, 0.2).ok());
  EXPECT_FALSE(CalibrateBoundaryThreshold({}, 0, heads, dim, 0.2).ok());
}

}  // namespace
}  // namespace pagoda::retriever
