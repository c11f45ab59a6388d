#include "eval.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>

#include "absl/strings/str_cat.h"
#include "pagoda/kernels/dtype.h"
#include "pagoda/retriever/boundary_trigger.h"
#include "pagoda/retriever/prompt_clusters.h"

namespace pagoda::bench {
namespace {

using retriever::AnnKind;
using retriever::Policy;
using retriever::Selection;
using retriever::Selector;
using retriever::SelectorOptions;
using retriever::TokenSpan;

constexpr int kUnit = 16;  // tokens per partial-output unit (pages are whole units)

float Half(uint16_t h) { return kernels::HalfToFloat(h); }

struct Config {
  ConfigStats stats;
  std::unique_ptr<Selector> selector;
  int32_t budget_pages = 0;
  std::vector<std::vector<int32_t>> prev_rows;  // last step's pages per row
};

// True attention of one step: probabilities, their prefix sums, per-unit partial outputs.
struct StepAttention {
  int64_t tokens = 0;
  std::vector<float> p;      // [q_heads, tokens]
  std::vector<double> cum;   // [q_heads, tokens + 1]
  std::vector<float> units;  // [q_heads, units, d]: sum of p_i v_i over the unit
  std::vector<float> out;    // [q_heads, d]
};

void ComputeAttention(const TraceLayer& tr, const std::vector<float>& kf,
                      const std::vector<float>& vf, int64_t step, StepAttention* a) {
  const int d = tr.head_dim, group = tr.q_heads / tr.kv_heads;
  const int64_t T = tr.first_query() + step + 1;
  const int64_t nunits = (T + kUnit - 1) / kUnit;
  const float scale = 1.f / std::sqrt(static_cast<float>(d));
  a->tokens = T;
  a->p.assign(static_cast<size_t>(tr.q_heads) * T, 0.f);
  a->cum.assign(static_cast<size_t>(tr.q_heads) * (T + 1), 0.0);
  const bool has_v = !vf.empty();
  a->units.assign(has_v ? static_cast<size_t>(tr.q_heads) * nunits * d : 0, 0.f);
  a->out.assign(has_v ? static_cast<size_t>(tr.q_heads) * d : 0, 0.f);
  std::vector<float> q(d);
  for (int hq = 0; hq < tr.q_heads; ++hq) {
    const int h = hq / group;
    for (int i = 0; i < d; ++i) q[i] = Half(tr.q[(hq * tr.queries + step) * d + i]) * scale;
    float* p = a->p.data() + hq * T;
    const float* k = kf.data() + static_cast<size_t>(h) * tr.tokens * d;
    float m = -INFINITY;
    for (int64_t t = 0; t < T; ++t) {
      const float* kt = k + t * d;
      float s0 = 0, s1 = 0, s2 = 0, s3 = 0;  // independent sums let the compiler vectorize
      for (int i = 0; i < d; i += 4) {
        s0 += q[i] * kt[i];
        s1 += q[i + 1] * kt[i + 1];
        s2 += q[i + 2] * kt[i + 2];
        s3 += q[i + 3] * kt[i + 3];
      }
      p[t] = (s0 + s1) + (s2 + s3);
      m = std::max(m, p[t]);
    }
    double z = 0;
    for (int64_t t = 0; t < T; ++t) {
      p[t] = std::exp(p[t] - m);
      z += p[t];
    }
    double* cum = a->cum.data() + hq * (T + 1);
    const float inv = static_cast<float>(1.0 / z);
    for (int64_t t = 0; t < T; ++t) {
      p[t] *= inv;
      cum[t + 1] = cum[t] + p[t];
    }
    if (!has_v) continue;
    const float* v = vf.data() + static_cast<size_t>(h) * tr.tokens * d;
    float* o = a->out.data() + hq * d;
    for (int64_t u = 0; u < nunits; ++u) {
      float* acc = a->units.data() + (hq * nunits + u) * d;
      for (int64_t t = u * kUnit; t < std::min(T, (u + 1) * kUnit); ++t) {
        const float pt = p[t];
        const float* vt = v + t * d;
        for (int i = 0; i < d; ++i) acc[i] += pt * vt[i];
      }
      for (int i = 0; i < d; ++i) o[i] += acc[i];
    }
  }
}

// Mass of the oracle: the best `pages` pages of `page_tokens` for head hq (no group sharing).
double OracleMass(const StepAttention& a, int hq, int page_tokens, int32_t pages,
                  std::vector<double>* scratch) {
  const int64_t T = a.tokens;
  const double* cum = a.cum.data() + hq * (T + 1);
  const int64_t n = (T + page_tokens - 1) / page_tokens;
  scratch->resize(n);
  for (int64_t p = 0; p < n; ++p) {
    (*scratch)[p] = cum[std::min(T, (p + 1) * page_tokens)] - cum[p * page_tokens];
  }
  const int64_t k = std::min<int64_t>(pages, n);
  std::nth_element(scratch->begin(), scratch->begin() + (k - 1), scratch->end(),
                   std::greater<double>());
  double mass = 0;
  for (int64_t i = 0; i < k; ++i) mass += (*scratch)[i];
  return mass;
}

// Masses per query head of the group-consistent oracle: the best `pages` pages of KV head h by
// the mass summed over its query heads (what one page set per KV head can reach at best).
std::vector<double> GroupOracleMasses(const StepAttention& a, int h, int group, int page_tokens,
                                      int32_t pages) {
  const int64_t T = a.tokens;
  const int64_t n = (T + page_tokens - 1) / page_tokens;
  auto page_mass = [&](int hq, int64_t p) {
    const double* cum = a.cum.data() + hq * (T + 1);
    return cum[std::min(T, (p + 1) * page_tokens)] - cum[p * page_tokens];
  };
  std::vector<std::pair<double, int64_t>> sum(n);
  for (int64_t p = 0; p < n; ++p) {
    sum[p] = {0.0, p};
    for (int g = 0; g < group; ++g) sum[p].first += page_mass(h * group + g, p);
  }
  const int64_t k = std::min<int64_t>(pages, n);
  std::nth_element(sum.begin(), sum.begin() + (k - 1), sum.end(), std::greater<>());
  std::vector<double> out(group, 0.0);
  for (int64_t i = 0; i < k; ++i) {
    for (int g = 0; g < group; ++g) out[g] += page_mass(h * group + g, sum[i].second);
  }
  return out;
}

void Measure(const TraceLayer& tr, const std::vector<float>& vf, const StepAttention& a,
             const Selection& sel, const std::vector<std::vector<double>>& oracle,
             ConfigStats* st) {
  const int d = tr.head_dim, group = tr.q_heads / tr.kv_heads;
  const int64_t T = a.tokens;
  const int64_t nunits = (T + kUnit - 1) / kUnit;
  std::vector<double> o(d);
  double group_mass = 0, group_best = 0;
  for (int hq = 0; hq < tr.q_heads; ++hq) {
    const int h = hq / group;
    const double* cum = a.cum.data() + hq * (T + 1);
    const float* p = a.p.data() + hq * T;
    double mass = 0;
    std::fill(o.begin(), o.end(), 0.0);
    for (const TokenSpan& s : sel.spans[h]) {
      mass += cum[s.end] - cum[s.begin];
      if (vf.empty()) continue;
      const float* v = vf.data() + static_cast<size_t>(h) * tr.tokens * d;
      int64_t t = s.begin;
      while (t < s.end) {
        if (t % kUnit == 0 && (t + kUnit <= s.end || s.end == T)) {
          const int64_t u = t / kUnit;
          const float* acc = a.units.data() + (hq * nunits + u) * d;
          for (int i = 0; i < d; ++i) o[i] += acc[i];
          t = std::min<int64_t>(T, t + kUnit);
        } else {
          for (int i = 0; i < d; ++i) o[i] += p[t] * v[t * d + i];
          ++t;
        }
      }
    }
    const double best = oracle[hq].front();
    st->recall.push_back(static_cast<float>(mass / best));
    st->oracle_mass.push_back(static_cast<float>(best));
    group_mass += mass;
    group_best += oracle[hq][1];
    if (hq % group == group - 1) {
      st->group_recall.push_back(static_cast<float>(group_mass / group_best));
      group_mass = group_best = 0;
    }
    if (!vf.empty() && mass > 0) {
      const float* full = a.out.data() + hq * d;
      double diff = 0, norm = 0;
      for (int i = 0; i < d; ++i) {
        const double e = o[i] / mass - full[i];
        diff += e * e;
        norm += static_cast<double>(full[i]) * full[i];
      }
      st->err_sum += std::sqrt(diff / norm);
      ++st->err_n;
    }
  }
}

}  // namespace

absl::StatusOr<PolicySpec> ParsePolicySpec(const std::string& name) {
  PolicySpec spec;
  spec.name = name;
  if (name == "ann-flat" || name == "ann") {
    spec.policy = Policy::kAnn;
    spec.ann = AnnKind::kFlat;
    return spec;
  }
  if (name == "ann-ivf") {
    spec.policy = Policy::kAnn;
    spec.ann = AnnKind::kIvf;
    return spec;
  }
  if (name == "ann-hnsw") {
    spec.policy = Policy::kAnn;
    spec.ann = AnnKind::kHnsw;
    return spec;
  }
  auto p = retriever::ParsePolicy(name);
  if (!p.ok()) return p.status();
  spec.policy = *p;
  return spec;
}

absl::StatusOr<std::vector<ConfigStats>> EvaluateLayer(const TraceLayer& tr,
                                                       const EvalOptions& options) {
  const int d = tr.head_dim;
  const int64_t start = tr.first_query();
  if (start < 1) return absl::InvalidArgumentError("trace: no prompt before the first query");
  const int64_t steps =
      options.max_steps > 0 ? std::min(options.max_steps, tr.queries) : tr.queries;
  std::vector<float> kf(tr.k.size()), vf(tr.v.size());
  for (size_t i = 0; i < kf.size(); ++i) kf[i] = Half(tr.k[i]);
  for (size_t i = 0; i < vf.size(); ++i) vf[i] = Half(tr.v[i]);
  auto keys = [&](int64_t b, int64_t e) {
    std::vector<uint16_t> out;
    out.reserve(static_cast<size_t>(tr.kv_heads) * (e - b) * d);
    for (int h = 0; h < tr.kv_heads; ++h) {
      const uint16_t* src = tr.k.data() + (static_cast<size_t>(h) * tr.tokens + b) * d;
      out.insert(out.end(), src, src + (e - b) * d);
    }
    return out;
  };
  auto query = [&](int64_t s) {
    std::vector<uint16_t> q(static_cast<size_t>(tr.q_heads) * d);
    for (int hq = 0; hq < tr.q_heads; ++hq) {
      std::copy_n(tr.q.data() + (hq * tr.queries + s) * d, d, q.data() + hq * d);
    }
    return q;
  };

  SelectorOptions base = options.base;
  base.kv_heads = tr.kv_heads;
  base.q_heads = tr.q_heads;
  base.head_dim = d;
  base.dtype = kernels::DType::kFloat16;

  // The boundary threshold: calibrated on the first queries (only the queries are used).
  float threshold = options.louis_threshold;
  if (threshold > 1.f) {
    const int64_t n = std::min(options.calib_steps, tr.queries);
    std::vector<float> qs;
    for (int64_t s = 0; s < n; ++s) {
      for (uint16_t x : query(s)) qs.push_back(Half(x));
    }
    auto tau = retriever::CalibrateBoundaryThreshold(qs, n, tr.q_heads, d, options.louis_rate);
    if (!tau.ok()) return tau.status();
    threshold = *tau;
  }
  base.boundary_threshold = threshold;

  const std::vector<uint16_t> prompt = keys(0, start);
  std::vector<Config> configs;
  for (int P : options.page_sizes) {
    std::shared_ptr<const retriever::PromptClusters> clusters;
    for (int den : options.budget_denominators) {
      const int64_t budget = (tr.tokens + int64_t{den} * P - 1) / (int64_t{den} * P) * P;
      if (budget > start) continue;
      for (const PolicySpec& spec : options.policies) {
        SelectorOptions o = base;
        o.page_tokens = P;
        o.budget_tokens = budget;
        o.ann_kind = spec.ann;
        Config c;
        if (spec.policy == Policy::kBoundary) {
          if (clusters == nullptr) {
            auto built = retriever::ClusterPrompt(o, prompt, start);
            if (!built.ok()) return built.status();
            clusters = *built;
          }
          auto sel = retriever::MakeBoundarySelector(o, clusters);
          if (!sel.ok()) return sel.status();
          c.selector = *std::move(sel);
        } else {
          auto sel = retriever::MakeSelector(spec.policy, o);
          if (!sel.ok()) return sel.status();
          c.selector = *std::move(sel);
        }
        if (absl::Status s = c.selector->Prefill(prompt, start); !s.ok()) return s;
        c.stats.doc = tr.doc;
        c.stats.layer = tr.layer;
        c.stats.policy = spec.name;
        c.stats.page_tokens = P;
        c.stats.budget_den = den;
        c.stats.budget_tokens = budget;
        c.stats.threshold = spec.policy == Policy::kBoundary ? threshold : 0.f;
        c.budget_pages = static_cast<int32_t>(budget / P);
        configs.push_back(std::move(c));
      }
    }
  }

  StepAttention att;
  std::vector<double> scratch;
  // oracle[(P, pages)][hq] -> {per-head oracle mass, group oracle mass}; a small cache per step.
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t t = start + s;
    const std::vector<uint16_t> k_t = keys(t, t + 1);
    const std::vector<uint16_t> q_t = query(s);
    const bool measure = s % options.stride == 0;
    if (measure) ComputeAttention(tr, kf, vf, s, &att);
    std::vector<std::pair<std::pair<int, int32_t>, std::vector<std::vector<double>>>> oracle_cache;
    for (Config& c : configs) {
      const auto t0 = std::chrono::steady_clock::now();
      if (absl::Status st = c.selector->Append(k_t, 1); !st.ok()) return st;
      auto sel = c.selector->Select(q_t);
      const auto t1 = std::chrono::steady_clock::now();
      if (!sel.ok()) {
        return absl::InternalError(absl::StrCat(c.stats.policy, " P=", c.stats.page_tokens,
                                                " step ", s, ": ", sel.status().message()));
      }
      ConfigStats& st = c.stats;
      st.select_ns += std::chrono::duration<double, std::nano>(t1 - t0).count();
      ++st.steps;
      st.retrievals += sel->retrieved ? 1 : 0;
      st.kv_bytes += static_cast<double>(sel->kv_bytes);
      st.summary_bytes += static_cast<double>(sel->summary_bytes);
      // The GPU holds what the previous step read or was told to prefetch; anything else this
      // step reads or prefetches must be moved in (the store's transfer cost).
      const int rows = sel->pages.num_rows();
      c.prev_rows.resize(rows);
      int64_t fresh = 0;
      for (int r = 0; r < rows; ++r) {
        std::vector<int32_t> row(sel->pages.indices.begin() + sel->pages.indptr[r],
                                 sel->pages.indices.begin() + sel->pages.indptr[r + 1]);
        row.insert(row.end(), sel->prefetch[r].begin(), sel->prefetch[r].end());
        std::sort(row.begin(), row.end());
        row.erase(std::unique(row.begin(), row.end()), row.end());
        for (int32_t p : row) {
          fresh += std::binary_search(c.prev_rows[r].begin(), c.prev_rows[r].end(), p) ? 0 : 1;
        }
        c.prev_rows[r] = std::move(row);
      }
      st.new_bytes += static_cast<double>(fresh) * c.stats.page_tokens * d * 4;
      if (!measure) continue;
      const std::pair<int, int32_t> key{c.stats.page_tokens, c.budget_pages};
      const std::vector<std::vector<double>>* oracle = nullptr;
      for (const auto& e : oracle_cache) {
        if (e.first == key) oracle = &e.second;
      }
      if (oracle == nullptr) {
        std::vector<std::vector<double>> masses(tr.q_heads);
        const int group = tr.q_heads / tr.kv_heads;
        for (int hq = 0; hq < tr.q_heads; ++hq) {
          masses[hq] = {OracleMass(att, hq, key.first, key.second, &scratch)};
        }
        for (int h = 0; h < tr.kv_heads; ++h) {
          const std::vector<double> g = GroupOracleMasses(att, h, group, key.first, key.second);
          for (int i = 0; i < group; ++i) masses[h * group + i].push_back(g[i]);
        }
        oracle_cache.emplace_back(key, std::move(masses));
        oracle = &oracle_cache.back().second;
      }
      Measure(tr, vf, att, *sel, *oracle, &st);
    }
  }
  std::vector<ConfigStats> out;
  for (Config& c : configs) out.push_back(std::move(c.stats));
  return out;
}

}  // namespace pagoda::bench
