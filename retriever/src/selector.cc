// Policy names, option checks and the selector factory.
#include "pagoda/retriever/selector.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "boundary_selector.h"
#include "pagoda/retriever/prompt_clusters.h"
#include "quest_selector.h"
#include "simple_selectors.h"

namespace pagoda::retriever {
namespace {

constexpr struct {
  Policy policy;
  absl::string_view name;
} kPolicyNames[] = {
    {Policy::kOracle, "oracle"},    {Policy::kQuest, "quest"}, {Policy::kHierarchical, "lserve"},
    {Policy::kBoundary, "louiskv"}, {Policy::kAnn, "ann"},     {Policy::kStreaming, "streaming"},
};

bool PowerOfTwo(int x) { return x > 0 && (x & (x - 1)) == 0; }

}  // namespace

absl::string_view PolicyName(Policy policy) {
  for (const auto& p : kPolicyNames) {
    if (p.policy == policy) return p.name;
  }
  return "unknown";
}

absl::StatusOr<Policy> ParsePolicy(absl::string_view name) {
  for (const auto& p : kPolicyNames) {
    if (p.name == name) return p.policy;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown retrieval policy '", name,
                                                 "' (oracle, quest, lserve, louiskv, ann, "
                                                 "streaming)"));
}

int64_t MaxScoredPages(Policy policy, const SelectorOptions& o, int64_t budget_pages) {
  if (policy != Policy::kBoundary || o.rescore_factor <= 1.0 || o.resident_factor <= 1.0) return 0;
  if (o.rescore_factor < o.resident_factor) {
    // Kept pages plus rescore_factor x the rest of the budget.
    return static_cast<int64_t>(std::ceil(o.rescore_factor * static_cast<double>(budget_pages)));
  }
  // Every resident page (at most resident_factor x the budget, fixed at the last retrieval) and
  // the pages kept since: the sinks and the window widened over the open segment.
  const int64_t open = std::max<int64_t>(o.window_pages, budget_pages / 4);
  return static_cast<int64_t>(std::ceil(o.resident_factor * static_cast<double>(budget_pages))) +
         o.sink_pages + open;
}

std::vector<int32_t> BestByMass(absl::Span<const float> mass, int32_t need) {
  const size_t n = mass.size();
  std::vector<int32_t> chosen;
  if (need <= 0) return chosen;
  chosen.resize(n);
  std::iota(chosen.begin(), chosen.end(), 0);
  if (static_cast<size_t>(need) < n) {
    // Larger mass first, ties to the lower index: a strict order, so the best `need` are one set.
    std::nth_element(
        chosen.begin(), chosen.begin() + need, chosen.end(),
        [&](int32_t a, int32_t b) { return mass[a] > mass[b] || (mass[a] == mass[b] && a < b); });
    chosen.resize(need);
    std::sort(chosen.begin(), chosen.end());
  }
  return chosen;
}

absl::Status ValidateOptions(const SelectorOptions& o) {
  auto bad = [](auto... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (o.kv_heads < 1 || o.q_heads < 1 || o.q_heads % o.kv_heads != 0) {
    return bad("selector options: q_heads (", o.q_heads, ") must be a positive multiple of ",
               "kv_heads (", o.kv_heads, ")");
  }
  if (o.head_dim < 1 || o.head_dim > 4096) {
    return bad("selector options: head_dim ", o.head_dim, " outside [1, 4096]");
  }
  if (!PowerOfTwo(o.page_tokens) || o.page_tokens < 4) {
    return bad("selector options: page_tokens ", o.page_tokens, " is not a power of two >= 4");
  }
  if (o.budget_tokens < o.page_tokens) {
    return bad("selector options: budget_tokens ", o.budget_tokens, " is below one page (",
               o.page_tokens, " tokens)");
  }
  if (o.sink_pages < 0 || o.window_pages < 1) {
    return bad("selector options: need sink_pages >= 0 and window_pages >= 1 (the current page)");
  }
  for (int h : o.streaming_kv_heads) {
    if (h < 0 || h >= o.kv_heads) {
      return bad("selector options: streaming KV head ", h, " outside [0, ", o.kv_heads, ")");
    }
  }
  if (o.prefetch_pages < 0) return bad("selector options: prefetch_pages < 0");
  if (!PowerOfTwo(o.logical_page_tokens) || o.reuse_steps < 1) {
    return bad("selector options: logical_page_tokens must be a power of two and reuse_steps >= 1");
  }
  if (!(o.boundary_threshold >= -1.f && o.boundary_threshold <= 1.f)) {
    return bad("selector options: boundary_threshold ", o.boundary_threshold, " outside [-1, 1]");
  }
  if (o.cluster_tokens < 1 || o.kmeans_iters < 0 || !(o.resident_factor >= 1.0) ||
      !(o.rescore_factor >= 0.0 && o.rescore_factor <= 64.0) ||
      !(o.coverage_threshold >= 0.f && o.coverage_threshold <= 1.f)) {
    return bad(
        "selector options: need cluster_tokens >= 1, kmeans_iters >= 0, "
        "resident_factor >= 1, rescore_factor in [0, 64], coverage_threshold in [0, 1]");
  }
  if (o.retrieve_late && (!o.trigger_late || o.coverage_threshold > 0.f)) {
    return bad("selector options: retrieve_late needs trigger_late and no coverage trigger");
  }
  if (o.cluster_window_tokens < 0 ||
      (o.cluster_window_tokens > 0 &&
       (o.page_tokens < 1 || o.cluster_window_tokens % o.page_tokens != 0))) {
    return bad(
        "selector options: cluster_window_tokens must be 0 or a positive multiple of "
        "page_tokens");
  }
  if (o.ivf_nprobe < 1 || o.hnsw_m < 2 || o.hnsw_ef_search < 1) {
    return bad("selector options: need ivf_nprobe >= 1, hnsw_m >= 2, hnsw_ef_search >= 1");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Selector>> MakeSelector(Policy policy,
                                                       const SelectorOptions& options) {
  if (absl::Status s = ValidateOptions(options); !s.ok()) return s;
  switch (policy) {
    case Policy::kOracle:
      return std::make_unique<internal::OracleSelector>(options);
    case Policy::kQuest:
      return std::make_unique<internal::QuestSelector>(options, 1, 1);
    case Policy::kHierarchical: {
      const int logical = std::min(options.logical_page_tokens, options.page_tokens);
      return std::make_unique<internal::QuestSelector>(options, options.page_tokens / logical,
                                                       options.reuse_steps);
    }
    case Policy::kBoundary:
      return std::make_unique<internal::BoundarySelector>(options, nullptr);
    case Policy::kAnn: {
      auto ann = std::make_unique<internal::AnnSelector>(options);
      if (absl::Status s = ann->Init(); !s.ok()) return s;
      return ann;
    }
    case Policy::kStreaming:
      return std::make_unique<internal::StreamingSelector>(options);
  }
  return absl::InvalidArgumentError("unknown retrieval policy");
}

absl::StatusOr<std::shared_ptr<const PromptClusters>> ClusterPrompt(const SelectorOptions& options,
                                                                    absl::Span<const uint16_t> keys,
                                                                    int64_t num_tokens,
                                                                    const KMeansRunner& run) {
  if (absl::Status s = ValidateOptions(options); !s.ok()) return s;
  internal::BoundarySelector selector(options, nullptr, run);
  if (absl::Status s = selector.Prefill(keys, num_tokens); !s.ok()) return s;
  return selector.clusters();
}

absl::StatusOr<std::unique_ptr<Selector>> MakeBoundarySelector(
    const SelectorOptions& options, std::shared_ptr<const PromptClusters> clusters) {
  if (absl::Status s = ValidateOptions(options); !s.ok()) return s;
  if (clusters == nullptr) return absl::InvalidArgumentError("MakeBoundarySelector: no clusters");
  return std::make_unique<internal::BoundarySelector>(options, std::move(clusters));
}

}  // namespace pagoda::retriever
