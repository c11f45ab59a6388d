#include "pagoda/retriever/boundary_trigger.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace pagoda::retriever {
namespace {

bool AllFinite(absl::Span<const float> v) {
  for (float x : v) {
    if (!std::isfinite(x)) return false;
  }
  return true;
}

// Fires the trigger over `steps` queries; returns the number of retrievals.
int64_t CountRetrievals(absl::Span<const float> queries, int64_t steps, int q_heads, int head_dim,
                        float threshold) {
  const size_t stride = static_cast<size_t>(q_heads) * head_dim;
  int64_t fires = 1;
  const float* anchor = queries.data();
  for (int64_t s = 1; s < steps; ++s) {
    const float* q = queries.data() + s * stride;
    if (MeanHeadCosine(absl::MakeConstSpan(anchor, stride), absl::MakeConstSpan(q, stride), q_heads,
                       head_dim) < threshold) {
      ++fires;
      anchor = q;
    }
  }
  return fires;
}

}  // namespace

float MeanHeadCosine(absl::Span<const float> a, absl::Span<const float> b, int q_heads,
                     int head_dim) {
  double total = 0;
  for (int h = 0; h < q_heads; ++h) {
    const float* x = a.data() + static_cast<size_t>(h) * head_dim;
    const float* y = b.data() + static_cast<size_t>(h) * head_dim;
    float xy = 0, xx = 0, yy = 0;
    for (int d = 0; d < head_dim; ++d) {
      xy += x[d] * y[d];
      xx += x[d] * x[d];
      yy += y[d] * y[d];
    }
    if (xx > 0 && yy > 0) total += xy / std::sqrt(xx * yy);
  }
  return static_cast<float>(total / q_heads);
}

absl::StatusOr<BoundaryTrigger> BoundaryTrigger::Create(int q_heads, int head_dim,
                                                        float threshold) {
  if (q_heads < 1 || head_dim < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "BoundaryTrigger: q_heads and head_dim must be >= 1, got ", q_heads, " and ", head_dim));
  }
  if (!(threshold >= -1.0f && threshold <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("BoundaryTrigger: threshold must be in [-1, 1], got ", threshold));
  }
  return BoundaryTrigger(q_heads, head_dim, threshold);
}

bool BoundaryTrigger::WouldFire(absl::Span<const float> q) const {
  return !has_anchor_ || MeanHeadCosine(anchor_, q, q_heads_, head_dim_) < threshold_;
}

absl::StatusOr<bool> BoundaryTrigger::Observe(absl::Span<const float> q) {
  const size_t want = static_cast<size_t>(q_heads_) * head_dim_;
  if (q.size() != want) {
    return absl::InvalidArgumentError(
        absl::StrCat("BoundaryTrigger: query has ", q.size(), " values, expected ", want));
  }
  if (!AllFinite(q)) return absl::InvalidArgumentError("BoundaryTrigger: non-finite query");
  if (has_anchor_) {
    last_similarity_ = MeanHeadCosine(anchor_, q, q_heads_, head_dim_);
    if (last_similarity_ >= threshold_) return false;
  } else {
    last_similarity_ = 1.0f;
  }
  anchor_.assign(q.begin(), q.end());
  has_anchor_ = true;
  return true;
}

absl::StatusOr<float> CalibrateBoundaryThreshold(absl::Span<const float> queries, int64_t steps,
                                                 int q_heads, int head_dim, double target_rate) {
  if (q_heads < 1 || head_dim < 1 || steps < 1) {
    return absl::InvalidArgumentError("CalibrateBoundaryThreshold: empty or malformed queries");
  }
  if (queries.size() != static_cast<size_t>(steps) * q_heads * head_dim) {
    return absl::InvalidArgumentError(absl::StrCat("CalibrateBoundaryThreshold: ", queries.size(),
                                                   " values for ", steps, " steps of [", q_heads,
                                                   ", ", head_dim, "]"));
  }
  if (!(target_rate > 0.0 && target_rate <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CalibrateBoundaryThreshold: target_rate must be in (0, 1], got ", target_rate));
  }
  if (!AllFinite(queries)) {
    return absl::InvalidArgumentError("CalibrateBoundaryThreshold: non-finite query");
  }
  const double allowed = target_rate * static_cast<double>(steps);
  // The retrieval count grows with the threshold; bisect for the largest one within budget.
  float lo = -1.0f, hi = 1.0f;
  if (static_cast<double>(CountRetrievals(queries, steps, q_heads, head_dim, hi)) <= allowed) {
    return hi;
  }
  for (int i = 0; i < 30; ++i) {
    const float mid = 0.5f * (lo + hi);
    if (static_cast<double>(CountRetrievals(queries, steps, q_heads, head_dim, mid)) <= allowed) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}

}  // namespace pagoda::retriever
