#include "boundary_selector.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "pagoda/kernels/reference.h"
#include "xxhash.h"

namespace pagoda::retriever::internal {

uint64_t KeysFingerprint(absl::Span<const uint16_t> keys) {
  return XXH3_64bits(keys.data(), keys.size() * sizeof(uint16_t));
}

absl::StatusOr<std::shared_ptr<const PromptClusters>> BuildPromptClusters(
    const KeyPool& pool, const SelectorOptions& options, uint64_t fingerprint,
    const KMeansRunner& run) {
  const int P = options.page_tokens;
  const int d = options.head_dim;
  const int heads = options.kv_heads;
  const int64_t n = pool.tokens();
  auto c = std::make_shared<PromptClusters>();
  c->prompt_tokens = n;
  c->kv_heads = heads;
  c->head_dim = d;
  c->page_tokens = P;
  c->sink_pages = options.sink_pages;
  c->window_pages = options.window_pages;
  c->cluster_tokens = options.cluster_tokens;
  c->cluster_window_tokens = options.cluster_window_tokens;
  c->keys_fingerprint = fingerprint;
  c->sink_tokens = static_cast<int32_t>(std::min<int64_t>(int64_t{options.sink_pages} * P, n));
  const int64_t tail = n - int64_t{options.window_pages} * P;
  c->natural_begin = std::min(n, std::max<int64_t>(c->sink_tokens, tail > 0 ? tail / P * P : 0));
  const int32_t clustered = static_cast<int32_t>(c->natural_begin - c->sink_tokens);
  c->centroids.assign(heads, {});
  c->cluster_off.assign(heads, std::vector<int32_t>(1, 0));
  c->members.assign(heads, {});
  if (clustered == 0) return c;
  // The cluster region starts and ends on page boundaries, so it is whole pages of the pool; so
  // does every window of it (cluster_window_tokens is a multiple of the page).
  const int32_t window = options.cluster_window_tokens > 0
                             ? std::min(clustered, options.cluster_window_tokens)
                             : clustered;
  std::vector<int32_t> assignment(static_cast<size_t>(heads) * clustered);  // global cluster ids
  std::vector<float> centroids;  // [h][cluster][d], filled window by window
  std::vector<std::vector<float>> head_centroids(heads);
  for (int32_t w0 = 0; w0 < clustered; w0 += window) {
    const int32_t len = std::min(window, clustered - w0);
    const int32_t k = std::max(1, len / options.cluster_tokens);
    std::vector<int32_t> pages(len / P);
    std::iota(pages.begin(), pages.end(), (c->sink_tokens + w0) / P);
    centroids.assign(static_cast<size_t>(heads) * k * d, 0.f);
    std::vector<int32_t> local(static_cast<size_t>(heads) * len);
    std::vector<int32_t> sizes(static_cast<size_t>(heads) * k);
    kernels::KMeansParams km;
    km.kv = pool.kv();
    km.pages = pages.data();
    km.num_tokens = len;
    km.num_clusters = k;
    km.centroids = centroids.data();
    km.assignment = local.data();
    km.cluster_size = sizes.data();
    if (absl::Status s = kernels::KMeansInitReference(km); !s.ok()) return s;
    if (absl::Status s = run ? run(km, options.kmeans_iters)
                             : kernels::KMeansReference(km, options.kmeans_iters);
        !s.ok()) {
      return s;
    }
    for (int h = 0; h < heads; ++h) {
      const size_t cd = static_cast<size_t>(k) * d;
      head_centroids[h].insert(head_centroids[h].end(), centroids.begin() + h * cd,
                               centroids.begin() + (h + 1) * cd);
      for (int32_t i = 0; i < len; ++i) {
        assignment[static_cast<size_t>(h) * clustered + w0 + i] =
            c->num_clusters + local[static_cast<size_t>(h) * len + i];
      }
    }
    c->num_clusters += k;
  }
  for (int h = 0; h < heads; ++h) {
    c->centroids[h] = std::move(head_centroids[h]);
    std::vector<int32_t>& off = c->cluster_off[h];
    off.assign(c->num_clusters + 1, 0);
    const int32_t* a = assignment.data() + static_cast<size_t>(h) * clustered;
    for (int32_t i = 0; i < clustered; ++i) ++off[a[i] + 1];
    for (int32_t q = 0; q < c->num_clusters; ++q) off[q + 1] += off[q];
    std::vector<int32_t> fill(off.begin(), off.end() - 1);
    c->members[h].resize(clustered);
    for (int32_t i = 0; i < clustered; ++i) c->members[h][fill[a[i]]++] = c->sink_tokens + i;
  }
  return c;
}

absl::Status BoundarySelector::OnPrefill(absl::Span<const uint16_t> keys, int64_t num_tokens) {
  auto trigger =
      BoundaryTrigger::Create(options_.q_heads, options_.head_dim, options_.boundary_threshold);
  if (!trigger.ok()) return trigger.status();
  const uint64_t fingerprint = KeysFingerprint(keys);
  if (clusters_ == nullptr) {
    auto built = BuildPromptClusters(pool_, options_, fingerprint, run_);
    if (!built.ok()) return built.status();
    clusters_ = *std::move(built);
  } else {
    const PromptClusters& c = *clusters_;
    if (c.prompt_tokens != num_tokens || c.keys_fingerprint != fingerprint ||
        c.kv_heads != options_.kv_heads || c.head_dim != options_.head_dim ||
        c.page_tokens != options_.page_tokens || c.sink_pages != options_.sink_pages ||
        c.window_pages != options_.window_pages || c.cluster_tokens != options_.cluster_tokens ||
        c.cluster_window_tokens != options_.cluster_window_tokens) {
      return absl::InvalidArgumentError(
          "boundary selector: the supplied prompt clusters were built from another prompt or "
          "with other options");
    }
  }
  trigger_ = *std::move(trigger);
  sink_tokens_ = clusters_->sink_tokens;
  natural_begin_ = clusters_->natural_begin;
  natural_layout_ = static_cast<int32_t>(natural_begin_);  // sinks + clustered = N tokens
  prefix_.assign(options_.kv_heads, std::vector<float>(options_.head_dim, 0.f));
  boundaries_.assign(1, natural_begin_);
  ExtendPrefix(natural_begin_, num_tokens - natural_begin_);
  return absl::OkStatus();
}

absl::Status BoundarySelector::OnAppend(int64_t first, int64_t num_tokens) {
  ExtendPrefix(first, num_tokens);
  return absl::OkStatus();
}

int64_t BoundarySelector::ExtraBytes() const {
  int64_t b = 0;
  for (const auto& p : prefix_) b += static_cast<int64_t>(p.capacity()) * 4;
  for (const auto& r : resident_) b += static_cast<int64_t>(r.capacity()) * 4;
  for (const auto& r : ranked_) b += static_cast<int64_t>(r.capacity()) * 4;
  if (clusters_ != nullptr) {  // shared between selectors of one prompt: counted by each
    for (int h = 0; h < clusters_->kv_heads; ++h) {
      b +=
          static_cast<int64_t>(clusters_->centroids[h].size()) * 4 +
          static_cast<int64_t>(clusters_->members[h].size() + clusters_->cluster_off[h].size()) * 4;
    }
  }
  return b;
}

void BoundarySelector::ExtendPrefix(int64_t first, int64_t num_tokens) {
  const int d = options_.head_dim;
  for (int h = 0; h < options_.kv_heads; ++h) {
    std::vector<float>& pre = prefix_[h];
    for (int64_t t = first; t < first + num_tokens; ++t) {
      const uint16_t* k = pool_.key(h, t);
      const size_t base = pre.size() - d;
      pre.resize(pre.size() + d);
      for (int i = 0; i < d; ++i)
        pre[base + d + i] = pre[base + i] + kernels::ToFloat(k[i], options_.dtype);
    }
  }
}

void BoundarySelector::SegmentMean(int h, int64_t a, int64_t b, float* out) const {
  const int d = options_.head_dim;
  const float* pa = prefix_[h].data() + (a - natural_begin_) * d;
  const float* pb = prefix_[h].data() + (b - natural_begin_) * d;
  const float inv = 1.f / static_cast<float>(b - a);
  for (int i = 0; i < d; ++i) out[i] = (pb[i] - pa[i]) * inv;
}

int32_t BoundarySelector::LayoutToPosition(int h, int32_t l) const {
  return static_cast<int32_t>(LayoutPosition(*clusters_, h, l));
}

absl::StatusOr<ScoreRequest> BoundarySelector::BeginChoose(absl::Span<const uint16_t> q,
                                                           absl::Span<const float> q_float,
                                                           const Plan& plan) {
  const bool late = options_.trigger_late && !last_q_.empty();
  auto fire = trigger_->Observe(late ? absl::MakeConstSpan(last_q_) : q_float);
  if (!fire.ok()) return fire.status();
  if (options_.trigger_late) last_q_.assign(q_float.begin(), q_float.end());
  bool retrieve = *fire;
  // retrieve_late: the retrieval owed since the last step is ranked with that step's query and
  // plan, and takes effect now; one the trigger fires for now waits for the next step (with a
  // resident set to serve this one from).
  std::optional<Owed> rank_late;
  rank_late.swap(owed_);
  if (options_.retrieve_late && retrieve && !resident_.empty()) {
    owed_ = Owed{plan, std::vector<float>(q_float.begin(), q_float.end())};
    retrieve = false;
  }
  if (rank_late.has_value()) return Retrieve(rank_late->q, rank_late->plan, plan);
  if (!retrieve && options_.coverage_threshold > 0.f && !resident_.empty()) {
    double coverage = 1.0;
    const int64_t scanned = Rank(q_float, plan, /*resident_only=*/false, &coverage);
    if (coverage < options_.coverage_threshold) {
      retrieve = true;
      trigger_->Reset();  // q becomes the anchor of the boundary trigger too
      if (auto anchored = trigger_->Observe(q_float); !anchored.ok()) return anchored.status();
    } else {
      // Serve from the resident pages, in the order of the full ranking.
      for (int h = 0; h < options_.kv_heads && h < static_cast<int>(resident_.size()); ++h) {
        std::vector<int32_t> sorted = resident_[h];
        std::sort(sorted.begin(), sorted.end());
        std::vector<int32_t>& ranked = ranked_[h];
        ranked.erase(std::remove_if(ranked.begin(), ranked.end(),
                                    [&](int32_t p) {
                                      return !std::binary_search(sorted.begin(), sorted.end(), p);
                                    }),
                     ranked.end());
      }
      return Begin(plan, false, scanned * options_.head_dim * 2);
    }
  }
  if (retrieve) return Retrieve(q_float, plan, plan);
  if (options_.resident_factor > 1.0 && !resident_.empty()) {
    if (RescoresAllResident()) {
      // Every resident page gets its exact mass: no estimate to rank them by first.
      if (closed_form_) return Steady(plan);
      ranked_ = resident_;
      return Begin(plan, false, 0);
    }
    const int64_t scanned = Rank(q_float, plan, /*resident_only=*/true);
    return Begin(plan, false, scanned * options_.head_dim * 2);
  }
  return Begin(plan, false, 0);
}

ScoreRequest BoundarySelector::Retrieve(absl::Span<const float> q_float, const Plan& at,
                                        const Plan& plan) {
  const int64_t now = at.tokens - 1;  // the query's own token opens the new segment
  if (now > boundaries_.back()) boundaries_.push_back(now);
  const int64_t scanned = Rank(q_float, at, /*resident_only=*/false);
  if (RescoresAllResident()) {
    // The ranking picks the resident set; the step then chooses among it by exact mass like
    // every step until the next retrieval.
    SetResident(at);
    if (closed_form_) {
      ScoreRequest steady = Steady(plan);
      steady.retrieved = true;
      return steady;
    }
    ranked_ = resident_;
  }
  return Begin(plan, true, scanned * options_.head_dim * 2);
}

int64_t BoundarySelector::Rank(absl::Span<const float> q_float, const Plan& plan,
                               bool resident_only, double* coverage) {
  const int d = options_.head_dim;
  const int P = options_.page_tokens;
  const int group = group_size();
  const float scale = 1.f / std::sqrt(static_cast<float>(d));
  const int32_t pages = static_cast<int32_t>((plan.tokens + P - 1) / P);
  const PromptClusters& pc = *clusters_;
  ranked_.assign(options_.kv_heads, {});
  std::vector<Unit> units;
  std::vector<float> logits, page_mass(pages), seg_means, block_t;
  std::vector<double> expo;
  std::vector<const float*> vecs;
  constexpr size_t kLanes = 8;
  const std::vector<float> zeros(d, 0.f);
  int64_t scanned_units = 0;
  double coverage_sum = 0;
  int coverage_heads = 0;
  for (int h = 0; h < options_.kv_heads; ++h) {
    if (IsStreaming(h)) continue;
    // The retrieval units: prompt clusters (by centroid) and closed segments (by mean key).
    units.clear();
    for (int32_t c = 0; c < pc.num_clusters; ++c) {
      const int32_t b = pc.cluster_off[h][c], e = pc.cluster_off[h][c + 1];
      if (b < e) units.push_back({sink_tokens_ + b, sink_tokens_ + e, c, -1});
    }
    for (size_t s = 0; s + 1 < boundaries_.size(); ++s) {
      units.push_back({NaturalToLayout(boundaries_[s]), NaturalToLayout(boundaries_[s + 1]), -1,
                       static_cast<int32_t>(s)});
    }
    if (resident_only) {
      // Between retrievals only the resident pages compete: score just the units on them (the
      // softmax normalization below then runs over those units, which is all the ranking needs).
      std::vector<char> resident(pages, 0);
      for (int32_t p : resident_[h]) {
        if (p < pages) resident[p] = 1;
      }
      units.erase(std::remove_if(units.begin(), units.end(),
                                 [&](const Unit& u) {
                                   for (int32_t p = u.layout_begin / P;
                                        p <= (u.layout_end - 1) / P && p < pages; ++p) {
                                     if (resident[p]) return false;
                                   }
                                   return true;
                                 }),
                  units.end());
    }
    scanned_units += static_cast<int64_t>(units.size());
    // Each unit's estimated attention probability per token, per query head: a unit of n keys
    // around mean m gets about n * exp(q.m * scale) of the softmax mass. Normalizing per head
    // before summing over the group (group_reduce) keeps one sharp head from drowning the rest.
    std::vector<float> density(units.size(), 0.f);
    // Each unit's vector: its centroid, or its segment's mean (computed once here).
    vecs.resize(units.size());
    seg_means.resize(units.size() * d);
    for (size_t u = 0; u < units.size(); ++u) {
      if (units[u].cluster >= 0) {
        vecs[u] = &pc.centroids[h][static_cast<size_t>(units[u].cluster) * d];
      } else {
        SegmentMean(h, boundaries_[units[u].segment], boundaries_[units[u].segment + 1],
                    seg_means.data() + u * d);
        vecs[u] = seg_means.data() + u * d;
      }
    }
    // The logits of every query head of the group, kLanes units at a time: the block's vectors
    // are transposed ([d][kLanes]) once for the group, so each head's dots run in SIMD lanes, one
    // unit per lane, each still summed over d in order (the logits of one unit at a time).
    const size_t U = units.size();
    logits.resize(static_cast<size_t>(group) * U);
    block_t.resize(static_cast<size_t>(d) * kLanes);
    for (size_t u0 = 0; u0 < U; u0 += kLanes) {
      const size_t n = std::min(kLanes, U - u0);
      for (size_t l = 0; l < kLanes; ++l) {  // lanes past the last unit hold zeros (never read)
        const float* v = l < n ? vecs[u0 + l] : zeros.data();
        for (int i = 0; i < d; ++i) block_t[static_cast<size_t>(i) * kLanes + l] = v[i];
      }
      for (int g = 0; g < group; ++g) {
        const float* qg = q_float.data() + static_cast<size_t>(h * group + g) * d;
        float lane[kLanes] = {};
        for (int i = 0; i < d; ++i) {
          const float qi = qg[i];
          const float* bi = block_t.data() + static_cast<size_t>(i) * kLanes;
          for (size_t l = 0; l < kLanes; ++l) lane[l] += qi * bi[l];
        }
        for (size_t l = 0; l < n; ++l) logits[g * U + u0 + l] = lane[l] * scale;
      }
    }
    for (int g = 0; g < group; ++g) {
      const float* lg = logits.data() + g * U;
      float top = -std::numeric_limits<float>::infinity();
      for (size_t u = 0; u < U; ++u) top = std::max(top, lg[u]);
      double z = 0;
      expo.resize(units.size());
      for (size_t u = 0; u < units.size(); ++u) {
        expo[u] = std::exp(double{lg[u]} - top);
        z += (units[u].layout_end - units[u].layout_begin) * expo[u];
      }
      for (size_t u = 0; u < units.size(); ++u) {
        const float prob = static_cast<float>(expo[u] / z);
        density[u] = options_.group_reduce == GroupReduce::kMax ? std::max(density[u], prob)
                                                                : density[u] + prob;
      }
    }
    // A layout page is worth the estimated mass of the unit tokens it holds.
    std::fill(page_mass.begin(), page_mass.end(), 0.f);
    for (size_t u = 0; u < units.size(); ++u) {
      for (int32_t l = units[u].layout_begin; l < units[u].layout_end;) {
        const int32_t p = l / P;
        const int32_t end = std::min(units[u].layout_end, (p + 1) * P);
        page_mass[p] += density[u] * static_cast<float>(end - l);
        l = end;
      }
    }
    std::vector<int32_t>& ranked = ranked_[h];
    if (resident_only) {
      ranked = resident_[h];
    } else {
      for (int32_t p = 0; p < pages; ++p) {
        if (page_mass[p] > 0) ranked.push_back(p);
      }
    }
    std::stable_sort(ranked.begin(), ranked.end(),
                     [&](int32_t a, int32_t b) { return page_mass[a] > page_mass[b]; });
    if (coverage != nullptr && !resident_only && h < static_cast<int>(resident_.size())) {
      const size_t free_pages = static_cast<size_t>(std::max(1, plan.free_pages()));
      std::vector<float> resident_mass;
      for (int32_t p : resident_[h]) {
        if (p < pages) resident_mass.push_back(page_mass[p]);
      }
      std::sort(resident_mass.begin(), resident_mass.end(), std::greater<>());
      double best = 0, held = 0;
      for (size_t i = 0; i < std::min(free_pages, ranked.size()); ++i) best += page_mass[ranked[i]];
      for (size_t i = 0; i < std::min(free_pages, resident_mass.size()); ++i) {
        held += resident_mass[i];
      }
      coverage_sum += best > 0 ? held / best : 1.0;
      ++coverage_heads;
    }
  }
  if (coverage != nullptr) *coverage = coverage_heads > 0 ? coverage_sum / coverage_heads : 1.0;
  return scanned_units;
}

int32_t BoundarySelector::WindowBegin(int h, int32_t pages, int32_t budget) const {
  // The local window: the last window_pages pages (the natural region is page-aligned in the
  // layout, so these are the pages the page policies keep), widened over the tokens generated
  // since the last retrieval (they have no score yet) up to a quarter of the budget.
  const int P = options_.page_tokens;
  const int32_t natural_first_page = natural_layout_ / P;
  int32_t first = pages - options_.window_pages;
  if (!IsStreaming(h)) {
    const int32_t open_first = NaturalToLayout(boundaries_.back()) / P;
    const int32_t open_cap = std::max(options_.window_pages, budget / 4);
    first = std::min(first, std::max(open_first, pages - open_cap));
  }
  return std::max({first, SinkPages(), natural_first_page});
}

ScoreRequest BoundarySelector::Steady(const Plan& plan) const {
  const int P = options_.page_tokens;
  const int32_t pages = static_cast<int32_t>((plan.tokens + P - 1) / P);
  ScoreRequest request;
  request.tokens = plan.tokens;
  request.steady.resize(options_.kv_heads);
  for (int h = 0; h < options_.kv_heads; ++h) {
    SteadyRow& row = request.steady[h];
    row.sink_end = SinkPages();
    row.window_begin = WindowBegin(h, pages, plan.budget_pages);
    row.pages = pages;
    // Begin's candidates: the resident pages (ascending) not kept, i.e. between the sinks and
    // the window; the budget left after the kept pages goes to the best of them.
    if (IsStreaming(h) || h >= static_cast<int>(resident_.size())) continue;
    const std::vector<int32_t>& res = resident_[h];
    row.cand_begin =
        static_cast<int32_t>(std::lower_bound(res.begin(), res.end(), row.sink_end) - res.begin());
    row.cand_end = static_cast<int32_t>(std::lower_bound(res.begin(), res.end(), row.window_begin) -
                                        res.begin());
    row.cand_end = std::max(row.cand_end, row.cand_begin);
    row.need = std::max(0, plan.budget_pages - row.kept());
  }
  return request;
}

void BoundarySelector::SetResident(const Plan& plan) {
  const int P = options_.page_tokens;
  const int32_t pages = static_cast<int32_t>((plan.tokens + P - 1) / P);
  const int32_t budget = plan.budget_pages;
  const int32_t total = budget + static_cast<int32_t>((options_.resident_factor - 1.0) * budget);
  resident_.resize(options_.kv_heads);
  std::vector<char> kept;
  for (int h = 0; h < options_.kv_heads; ++h) {
    std::vector<int32_t>& res = resident_[h];
    res.clear();
    if (IsStreaming(h) || h >= static_cast<int>(ranked_.size())) continue;
    kept.assign(pages, 0);
    for (int32_t p = 0; p < SinkPages() && p < pages; ++p) kept[p] = 1;
    for (int32_t p = WindowBegin(h, pages, budget); p < pages; ++p) kept[p] = 1;
    for (int32_t p = 0; p < pages; ++p) {
      if (kept[p]) res.push_back(p);
    }
    for (int32_t p : ranked_[h]) {
      if (static_cast<int32_t>(res.size()) >= total) break;
      if (p < pages && !kept[p]) {
        kept[p] = 1;
        res.push_back(p);
      }
    }
    // Ascending: every later step's candidates are then (a caller can resolve them against its
    // last step's by one merge).
    std::sort(res.begin(), res.end());
  }
}

ScoreRequest BoundarySelector::Begin(const Plan& plan, bool retrieved, int64_t summary_bytes) {
  const int P = options_.page_tokens;
  const int H = options_.kv_heads;
  const int32_t T = static_cast<int32_t>(plan.tokens);
  const int32_t pages = (T + P - 1) / P;  // the layout is a permutation of [0, T)
  const int32_t budget = plan.budget_pages;
  pending_.plan = plan;
  pending_.retrieved = retrieved;
  pending_.summary_bytes = summary_bytes;
  pending_.mark.resize(H);
  pending_.marked.resize(H);
  pending_.used.resize(H);
  for (int h = 0; h < H; ++h) pending_.Reset(h, pages);
  pending_.cand.assign(H, {});
  ScoreRequest request;
  request.tokens = T;
  request.pages.assign(H, {});
  request.first_candidate.assign(H, 0);
  for (int h = 0; h < H; ++h) {
    std::vector<char>& mark = pending_.mark[h];
    int32_t& used = pending_.used[h];
    auto mark_page = [&](int32_t p) { pending_.Mark(h, p); };
    const int32_t sink_pages = SinkPages();
    for (int32_t p = 0; p < sink_pages; ++p) mark_page(p);
    for (int32_t p = WindowBegin(h, pages, budget); p < pages; ++p) mark_page(p);
    // Exact rescoring: the best rescore_factor x free pages of ranked_ not kept already. Only
    // resident pages are rescored: ranked_ holds them first at a retrieval (the fetch makes the
    // best resident_factor x budget pages resident) and only them between retrievals.
    if (IsStreaming(h) || h >= static_cast<int>(ranked_.size()) || options_.rescore_factor <= 1.0 ||
        options_.resident_factor <= 1.0) {
      continue;
    }
    // With RescoresAllResident, every resident page (the retrieval set them already); otherwise
    // at a retrieval the best of the whole ranking (those about to become resident).
    const size_t want =
        RescoresAllResident()
            ? ranked_[h].size()
            : static_cast<size_t>(std::ceil(
                  std::min(options_.rescore_factor, options_.resident_factor) * (budget - used)));
    std::vector<int32_t>& cand = pending_.cand[h];
    for (int32_t p : ranked_[h]) {
      if (cand.size() >= want) break;
      if (p < pages && !mark[p]) cand.push_back(p);
    }
    if (cand.empty()) continue;
    // One softmax over the kept pages' tokens and the candidates' (layout order, kept first).
    request.pages[h] = pending_.marked[h];  // sinks then the window: ascending
    request.first_candidate[h] = static_cast<int32_t>(request.pages[h].size());
    request.pages[h].insert(request.pages[h].end(), cand.begin(), cand.end());
  }
  return request;
}

void BoundarySelector::Reorder(int h, absl::Span<const float> cand_mass, size_t need) {
  const std::vector<int32_t>& cand = pending_.cand[h];
  // Larger mass first, ties in candidate order: what a stable sort by mass gives.
  std::vector<std::pair<float, int32_t>> order(cand.size());
  for (size_t i = 0; i < cand.size(); ++i) order[i] = {cand_mass[i], static_cast<int32_t>(i)};
  const auto better = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  const int32_t pages = static_cast<int32_t>(pending_.mark[h].size());
  std::vector<int32_t> ranked;
  ranked.reserve(ranked_[h].size());
  if (need >= order.size()) {
    std::sort(order.begin(), order.end(), better);
    for (const auto& [mass, i] : order) ranked.push_back(cand[i]);
  } else {
    // Only which candidates are the best `need` matters: that set first, then the others, each
    // in candidate order.
    std::nth_element(order.begin(), order.begin() + need, order.end(), better);
    std::vector<char> best(cand.size(), 0);
    for (size_t k = 0; k < need; ++k) best[order[k].second] = 1;
    for (size_t i = 0; i < cand.size(); ++i) {
      if (best[i]) ranked.push_back(cand[i]);
    }
    for (size_t i = 0; i < cand.size(); ++i) {
      if (!best[i]) ranked.push_back(cand[i]);
    }
  }
  // Then the rest of ranked_: the candidates were its first cand.size() pages that are in range
  // and not kept (Begin's rule; nothing is marked between Begin and here).
  const std::vector<char>& mark = pending_.mark[h];
  size_t taken = 0;
  for (int32_t p : ranked_[h]) {
    if (p < pages && !mark[p] && taken < cand.size()) {
      ++taken;
    } else {
      ranked.push_back(p);
    }
  }
  ranked_[h] = std::move(ranked);
}

absl::StatusOr<Selection> BoundarySelector::FinishChoose(
    absl::Span<const std::vector<float>> mass) {
  const Plan& plan = pending_.plan;
  const bool retrieved = pending_.retrieved;
  // A retrieval whose exact masses pick what becomes resident (not with RescoresAllResident: its
  // resident set came from the ranking, at BeginChoose).
  const bool reranks = retrieved && !RescoresAllResident();
  int64_t summary_bytes = pending_.summary_bytes;
  const int P = options_.page_tokens;
  const int32_t T = static_cast<int32_t>(plan.tokens);
  const int32_t pages = (T + P - 1) / P;
  const int32_t budget = plan.budget_pages;
  Selection out;
  out.spans.resize(options_.kv_heads);
  out.prefetch.resize(options_.kv_heads);
  int64_t tokens_read = 0;
  for (int h = 0; h < options_.kv_heads; ++h) {
    std::vector<char>& mark = pending_.mark[h];
    int32_t& used = pending_.used[h];
    auto mark_page = [&](int32_t p) { pending_.Mark(h, p); };
    const std::vector<int32_t>& rescored = pending_.cand[h];
    if (!rescored.empty()) {
      const size_t first_cand = mass[h].size() - rescored.size();
      // A retrieval ranks what becomes resident too; otherwise only the budget's fill matters.
      const size_t need =
          reranks ? rescored.size() : static_cast<size_t>(std::max(0, budget - used));
      Reorder(h, absl::MakeConstSpan(mass[h]).subspan(first_cand), need);
    }
    if (!IsStreaming(h) && h < static_cast<int>(ranked_.size())) {
      // A retrieval makes the best resident_factor x budget pages resident (the ones past the
      // budget go out as prefetch hints); later steps choose among them.
      const int32_t extra =
          reranks ? static_cast<int32_t>((options_.resident_factor - 1.0) * budget) : 0;
      int32_t hinted = 0;
      for (int32_t p : ranked_[h]) {
        if (p >= pages || mark[p]) continue;
        if (used < budget) {
          mark_page(p);
        } else if (reranks && hinted < std::max(extra, options_.prefetch_pages)) {
          out.prefetch[h].push_back(p);
          ++hinted;
        } else if (!reranks && options_.resident_factor > 1.0) {
          out.prefetch[h].push_back(p);  // resident, not attended this step
        } else if (!reranks) {
          continue;
        } else {
          break;
        }
      }
      if (reranks) {
        resident_.resize(options_.kv_heads);
        resident_[h] = pending_.Kept(h);
        resident_[h].insert(
            resident_[h].end(), out.prefetch[h].begin(),
            out.prefetch[h].begin() + std::min<size_t>(extra, out.prefetch[h].size()));
      }
    }
    // The keys of rescored pages that are not attended are read for the rescoring only.
    for (int32_t p : rescored) {
      if (!mark[p])
        summary_bytes += int64_t{std::min(T, (p + 1) * P) - p * P} * options_.head_dim * 2;
    }
    std::vector<int32_t> positions;
    for (int32_t p : pending_.Kept(h)) {
      out.pages.indices.push_back(p);
      tokens_read += std::min(T, (p + 1) * P) - p * P;
      if (!options_.token_spans) continue;
      for (int32_t l = p * P; l < std::min(T, (p + 1) * P); ++l) {
        positions.push_back(LayoutToPosition(h, l));
      }
    }
    out.pages.indptr.push_back(static_cast<int32_t>(out.pages.indices.size()));
    out.pages.last_page_len.push_back(mark[pages - 1] ? T - (pages - 1) * P : P);
    std::sort(positions.begin(), positions.end());
    std::vector<TokenSpan>& spans = out.spans[h];
    for (int32_t t : positions) {
      if (!spans.empty() && spans.back().end == t) {
        ++spans.back().end;
      } else {
        spans.push_back({t, t + 1});
      }
    }
  }
  out.kv_bytes = tokens_read * options_.head_dim * 2 * 2;
  out.retrieved = retrieved;
  out.summary_bytes = summary_bytes;
  return out;
}

}  // namespace pagoda::retriever::internal
