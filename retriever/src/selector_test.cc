#include "pagoda/retriever/selector.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "boundary_selector.h"
#include "gtest/gtest.h"
#include "pagoda/kernels/reference.h"
#include "pagoda/retriever/prompt_clusters.h"
#include "test_data.h"

namespace pagoda::retriever {
namespace {

using test_data::NeedleData;

bool Covers(const std::vector<TokenSpan>& spans, int64_t begin, int64_t end) {
  for (int64_t t = begin; t < end; ++t) {
    bool in = false;
    for (const TokenSpan& s : spans) in = in || (t >= s.begin && t < s.end);
    if (!in) return false;
  }
  return true;
}

int64_t Tokens(const std::vector<TokenSpan>& spans) {
  int64_t n = 0;
  for (const TokenSpan& s : spans) n += s.size();
  return n;
}

// The query of step t for the boundary-trigger tests: the last one decayed a little plus noise,
// reset every 16th step (the trigger fires on those jumps).
void DriftQuery(std::vector<uint16_t>& q, int64_t t, std::mt19937& rng,
                std::normal_distribution<float>& noise) {
  for (uint16_t& x : q) {
    x = test_data::Half(kernels::ToFloat(x, kernels::DType::kFloat16) * (t % 16 == 0 ? 0.f : 0.9f) +
                        0.3f * noise(rng));
  }
}

// Every selection must be a valid CSR page table whose spans agree with its size.
void CheckWellFormed(const Selection& s, const SelectorOptions& o, int64_t tokens) {
  ASSERT_EQ(s.pages.num_rows(), o.kv_heads);
  ASSERT_EQ(s.spans.size(), static_cast<size_t>(o.kv_heads));
  EXPECT_EQ(s.pages.indptr[0], 0);
  int64_t total = 0;
  for (int r = 0; r < o.kv_heads; ++r) {
    const int32_t n = s.pages.indptr[r + 1] - s.pages.indptr[r];
    ASSERT_GE(n, 1);
    EXPECT_LE(n * o.page_tokens, o.budget_tokens);
    const int32_t last = s.pages.last_page_len[r];
    EXPECT_GE(last, 1);
    EXPECT_LE(last, o.page_tokens);
    // Pages are unique, so the row attends (n - 1) full pages plus the last.
    std::vector<int32_t> row(s.pages.indices.begin() + s.pages.indptr[r],
                             s.pages.indices.begin() + s.pages.indptr[r + 1]);
    std::sort(row.begin(), row.end());
    EXPECT_EQ(std::adjacent_find(row.begin(), row.end()), row.end());
    EXPECT_EQ(Tokens(s.spans[r]), int64_t{n - 1} * o.page_tokens + last);
    for (size_t i = 0; i < s.spans[r].size(); ++i) {
      EXPECT_LT(s.spans[r][i].begin, s.spans[r][i].end);
      EXPECT_LE(s.spans[r][i].end, tokens);
      if (i > 0) {
        EXPECT_LT(s.spans[r][i - 1].end, s.spans[r][i].begin);
      }
    }
    // The newest token (the query's own) is always attended.
    EXPECT_TRUE(Covers(s.spans[r], tokens - 1, tokens));
    total += Tokens(s.spans[r]);
  }
  EXPECT_EQ(s.kv_bytes, total * o.head_dim * 4);
}

SelectorOptions Options(int page_tokens, int64_t budget) {
  SelectorOptions o;
  o.page_tokens = page_tokens;
  o.budget_tokens = budget;
  o.cluster_tokens = 16;
  return o;
}

class NeedleTest : public ::testing::TestWithParam<Policy> {};

// A needle of 16 tokens at position 400 in a 1024-token prompt; a budget of 8 pages (1/8).
TEST_P(NeedleTest, NeedlePageIsSelected) {
  const Policy policy = GetParam();
  for (int page : {16, 32, 64}) {
    SCOPED_TRACE(::testing::PrintToString(page));
    const int64_t n = 1024, needle = 400;
    NeedleData data(n, needle, 16, 11);
    SelectorOptions o = Options(page, 8 * page);
    o.ann_kind = AnnKind::kHnsw;
    auto sel = MakeSelector(policy, o);
    ASSERT_TRUE(sel.ok()) << sel.status();
    ASSERT_TRUE((*sel)->Prefill(data.Keys(0, n - 8), n - 8).ok());
    for (int64_t t = n - 8; t < n; ++t) {
      ASSERT_TRUE((*sel)->Append(data.Keys(t, t + 1), 1).ok());
      auto s = (*sel)->Select(data.Query(3.f));
      ASSERT_TRUE(s.ok()) << s.status();
      CheckWellFormed(*s, o, t + 1);
      for (int r = 0; r < o.kv_heads; ++r) {
        EXPECT_TRUE(Covers(s->spans[r], needle, needle + 16)) << "row " << r << " step " << t;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllPolicies, NeedleTest,
                         ::testing::Values(Policy::kOracle, Policy::kQuest, Policy::kHierarchical,
                                           Policy::kBoundary, Policy::kAnn),
                         [](const auto& info) { return std::string(PolicyName(info.param)); });

TEST(SelectorTest, AnnKindsAllFindTheNeedle) {
  for (AnnKind kind : {AnnKind::kFlat, AnnKind::kIvf, AnnKind::kHnsw}) {
    NeedleData data(2048, 1000, 16, 5);
    SelectorOptions o = Options(16, 256);
    o.ann_kind = kind;
    o.ivf_nprobe = 64;  // all lists: exact
    auto sel = MakeSelector(Policy::kAnn, o);
    ASSERT_TRUE(sel.ok());
    ASSERT_TRUE((*sel)->Prefill(data.Keys(0, 2048), 2048).ok());
    auto s = (*sel)->Select(data.Query(3.f));
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_GT(s->summary_bytes, 0);
    for (int r = 0; r < o.kv_heads; ++r) EXPECT_TRUE(Covers(s->spans[r], 1000, 1016));
  }
}

TEST(SelectorTest, StreamingKeepsSinksAndRecentPages) {
  NeedleData data(1024, 400, 16, 3);
  SelectorOptions o = Options(16, 128);
  auto sel = MakeSelector(Policy::kStreaming, o);
  ASSERT_TRUE(sel.ok());
  ASSERT_TRUE((*sel)->Prefill(data.Keys(0, 1000), 1000).ok());
  auto s = (*sel)->Select(data.Query(3.f));
  ASSERT_TRUE(s.ok());
  CheckWellFormed(*s, o, 1000);
  for (int r = 0; r < o.kv_heads; ++r) {
    // Sink page 0, then the 7 newest pages 56..62 (page 62 holds 1000 - 992 = 8 tokens).
    ASSERT_EQ(s->spans[r].size(), 2u);
    EXPECT_EQ(s->spans[r][0].begin, 0);
    EXPECT_EQ(s->spans[r][0].end, 16);
    EXPECT_EQ(s->spans[r][1].begin, 56 * 16);
    EXPECT_EQ(s->spans[r][1].end, 1000);
    EXPECT_FALSE(Covers(s->spans[r], 400, 416));
  }
}

TEST(SelectorTest, StreamingHeadsKeepOnlySinksAndWindow) {
  for (Policy policy : {Policy::kQuest, Policy::kBoundary, Policy::kOracle}) {
    NeedleData data(1024, 400, 16, 3);
    SelectorOptions o = Options(16, 128);
    o.streaming_kv_heads = {1, 3};
    auto sel = MakeSelector(policy, o);
    ASSERT_TRUE(sel.ok());
    ASSERT_TRUE((*sel)->Prefill(data.Keys(0, 1024), 1024).ok());
    auto s = (*sel)->Select(data.Query(3.f));
    ASSERT_TRUE(s.ok());
    for (int r : {1, 3}) {
      ASSERT_EQ(s->spans[r].size(), 2u) << PolicyName(policy);
      EXPECT_EQ(s->spans[r][0].begin, 0);
      EXPECT_EQ(s->spans[r][0].end, 16);
      EXPECT_EQ(s->spans[r][1].begin, 1024 - 16);
    }
    for (int r : {0, 2}) EXPECT_TRUE(Covers(s->spans[r], 400, 416)) << PolicyName(policy);
  }
}

TEST(SelectorTest, HierarchicalReusesForReuseSteps) {
  NeedleData data(2048, 700, 16, 9);
  SelectorOptions o = Options(64, 512);
  o.reuse_steps = 4;
  auto sel = MakeSelector(Policy::kHierarchical, o);
  ASSERT_TRUE(sel.ok());
  ASSERT_TRUE((*sel)->Prefill(data.Keys(0, 2040), 2040).ok());
  std::vector<bool> retrieved;
  for (int64_t t = 2040; t < 2048; ++t) {
    ASSERT_TRUE((*sel)->Append(data.Keys(t, t + 1), 1).ok());
    auto s = (*sel)->Select(data.Query(3.f));
    ASSERT_TRUE(s.ok());
    retrieved.push_back(s->retrieved);
    EXPECT_EQ(s->summary_bytes > 0, s->retrieved);
    for (int r = 0; r < 4; ++r) EXPECT_TRUE(Covers(s->spans[r], 700, 716));
  }
  EXPECT_EQ(retrieved, (std::vector<bool>{true, false, false, false, true, false, false, false}));
}

TEST(SelectorTest, HierarchicalSubPagesBeatCoarseBoundsOnAPartialNeedle) {
  // In a 64-token page, a 16-token sub-page holds the needle; the other 48 tokens are noise with a
  // wide spread. The max over 16-token sub-pages sees the needle; a plain 64-token min/max box
  // does too (its max covers it), so both must select the page.
  NeedleData data(4096, 64 * 20 + 32, 16, 21);
  for (Policy p : {Policy::kQuest, Policy::kHierarchical}) {
    SelectorOptions o = Options(64, 512);
    auto sel = MakeSelector(p, o);
    ASSERT_TRUE(sel.ok());
    ASSERT_TRUE((*sel)->Prefill(data.Keys(0, 4096), 4096).ok());
    auto s = (*sel)->Select(data.Query(3.f));
    ASSERT_TRUE(s.ok());
    for (int r = 0; r < 4; ++r) EXPECT_TRUE(Covers(s->spans[r], 64 * 20, 64 * 21));
  }
}

TEST(SelectorTest, BoundaryRetrievesOnlyWhenTheQueryDrifts) {
  NeedleData data(2048, 900, 16, 4);
  SelectorOptions o = Options(16, 256);
  o.boundary_threshold = 0.8f;
  o.resident_factor = 1.0;  // plain LouisKV: no rescoring between retrievals
  auto sel = MakeSelector(Policy::kBoundary, o);
  ASSERT_TRUE(sel.ok());
  ASSERT_TRUE((*sel)->Prefill(data.Keys(0, 2000), 2000).ok());
  int retrievals = 0;
  for (int64_t t = 2000; t < 2010; ++t) {
    ASSERT_TRUE((*sel)->Append(data.Keys(t, t + 1), 1).ok());
    auto s = (*sel)->Select(data.Query(3.f));  // the same query every step
    ASSERT_TRUE(s.ok());
    CheckWellFormed(*s, o, t + 1);
    retrievals += s->retrieved ? 1 : 0;
    EXPECT_EQ(s->summary_bytes > 0, s->retrieved);
    for (int r = 0; r < 4; ++r) EXPECT_TRUE(Covers(s->spans[r], 900, 916));
  }
  EXPECT_EQ(retrievals, 1);
  // A query pointing elsewhere is a boundary: retrieve again.
  ASSERT_TRUE((*sel)->Append(data.Keys(2010, 2011), 1).ok());
  auto s = (*sel)->Select(data.Query(-3.f));
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->retrieved);
}

// trigger_late: the drift in step t's query makes step t + 1 retrieve (with its own query).
TEST(SelectorTest, BoundaryLateTriggerRetrievesTheStepAfterTheDrift) {
  NeedleData data(2048, 900, 16, 4);
  SelectorOptions o = Options(16, 256);
  o.boundary_threshold = 0.8f;
  o.trigger_late = true;
  auto sel = MakeSelector(Policy::kBoundary, o);
  ASSERT_TRUE(sel.ok());
  ASSERT_TRUE((*sel)->Prefill(data.Keys(0, 2000), 2000).ok());
  const std::vector<float> scale = {3.f, 3.f, 3.f, -3.f, -3.f, -3.f, -3.f};
  std::vector<bool> retrieved;
  for (size_t i = 0; i < scale.size(); ++i) {
    const int64_t t = 2000 + static_cast<int64_t>(i);
    ASSERT_TRUE((*sel)->Append(data.Keys(t, t + 1), 1).ok());
    auto s = (*sel)->Select(data.Query(scale[i]));
    ASSERT_TRUE(s.ok()) << s.status();
    CheckWellFormed(*s, o, t + 1);
    retrieved.push_back(s->retrieved);
  }
  // The first step retrieves (nothing earlier to observe); the query turns at step 3; step 4
  // retrieves, then the new query is the anchor.
  EXPECT_EQ(retrieved, std::vector<bool>({true, false, false, false, true, false, false}));
}

TEST(SelectorTest, BoundaryRescoresResidentPagesBetweenRetrievals) {
  // Two needles; the query moves from one to the other with the trigger held off. Each needle
  // cluster straddles two layout pages; the three free pages hold needle A whole and part of B.
  // With a resident set four times the budget, B is resident after the first retrieval and the
  // second step attends all of it without a new retrieval; plain reuse does not.
  test_data::NeedleData a(2048, 480, 16, 4);
  test_data::NeedleData b(2048, 1200, 16, 6);
  std::vector<float> keys = a.keys;
  for (int h = 0; h < 4; ++h) {
    for (int64_t t = 1200; t < 1216; ++t) {
      for (int d = 0; d < 64; ++d) keys[(h * 2048 + t) * 64 + d] = b.keys[(h * 2048 + t) * 64 + d];
    }
  }
  a.keys = keys;
  auto query = [&](float wa, float wb) {
    std::vector<uint16_t> q;
    for (int hq = 0; hq < 12; ++hq) {
      for (int d = 0; d < 64; ++d) {
        q.push_back(test_data::Half(wa * a.directions[(hq / 3) * 64 + d] +
                                    wb * b.directions[(hq / 3) * 64 + d]));
      }
    }
    return q;
  };
  for (double factor : {1.0, 4.0}) {
    SelectorOptions o = Options(16, 80);  // sink, window and three free pages
    o.boundary_threshold = -1.f;          // retrieve only on the first step
    o.resident_factor = factor;
    // Whole-prompt clusters: three free pages hold both needles only where their clusters fall on
    // page boundaries of the layout, which this test's data was laid out for.
    o.cluster_window_tokens = 0;
    auto sel = MakeSelector(Policy::kBoundary, o);
    ASSERT_TRUE(sel.ok());
    ASSERT_TRUE((*sel)->Prefill(a.Keys(0, 2040), 2040).ok());
    ASSERT_TRUE((*sel)->Append(a.Keys(2040, 2041), 1).ok());
    auto first = (*sel)->Select(query(3.f, 1.5f));  // both needles score; the first more
    ASSERT_TRUE(first.ok());
    EXPECT_TRUE(first->retrieved);
    ASSERT_TRUE((*sel)->Append(a.Keys(2041, 2042), 1).ok());
    auto second = (*sel)->Select(query(0.f, 3.f));
    ASSERT_TRUE(second.ok());
    EXPECT_FALSE(second->retrieved);
    for (int r = 0; r < 4; ++r) {
      EXPECT_TRUE(Covers(first->spans[r], 480, 496));
      EXPECT_EQ(Covers(second->spans[r], 1200, 1216), factor > 1.0) << factor;
    }
    EXPECT_EQ(second->summary_bytes > 0, factor > 1.0);
  }
}

TEST(SelectorTest, BoundaryExactRescoringFixesACentroidTie) {
  // Hand-made clusters: a weak decoy page (positions 320..335, keys 1 x the needle direction) and
  // the strong needle (640..655, 4 x) share cluster 0, so their two layout pages (1: decoy, 2:
  // needle) get the same centroid estimate and the tie goes to the decoy; every other 16 tokens
  // form a cluster of their own. One free page: only exact rescoring gives it to the needle.
  const int64_t n = 1024;
  NeedleData data(n, 640, 16, 12);
  for (int h = 0; h < data.kv_heads; ++h) {
    for (int64_t t = 320; t < 336; ++t) {
      for (int d = 0; d < data.dim; ++d) {
        data.keys[(h * n + t) * data.dim + d] = data.directions[h * data.dim + d];
      }
    }
  }
  const std::vector<uint16_t> prompt = data.Keys(0, n);
  SelectorOptions o = Options(16, 48);  // sink + window + 1 free page
  auto clusters = std::make_shared<PromptClusters>();
  clusters->prompt_tokens = n;
  clusters->kv_heads = o.kv_heads;
  clusters->head_dim = o.head_dim;
  clusters->page_tokens = o.page_tokens;
  clusters->sink_pages = o.sink_pages;
  clusters->window_pages = o.window_pages;
  clusters->cluster_tokens = o.cluster_tokens;
  clusters->cluster_window_tokens = o.cluster_window_tokens;
  clusters->keys_fingerprint = internal::KeysFingerprint(prompt);
  clusters->sink_tokens = 16;
  clusters->natural_begin = n - 16;
  std::vector<std::vector<int32_t>> groups = {{}};
  for (int32_t t = 320; t < 336; ++t) groups[0].push_back(t);
  for (int32_t t = 640; t < 656; ++t) groups[0].push_back(t);
  for (int32_t b = 16; b < n - 16; b += 16) {
    if (b == 320 || b == 640) continue;
    groups.emplace_back();
    for (int32_t t = b; t < b + 16; ++t) groups.back().push_back(t);
  }
  clusters->num_clusters = static_cast<int32_t>(groups.size());
  clusters->centroids.assign(o.kv_heads, {});
  clusters->cluster_off.assign(o.kv_heads, {0});
  clusters->members.assign(o.kv_heads, {});
  for (int h = 0; h < o.kv_heads; ++h) {
    for (const std::vector<int32_t>& g : groups) {
      for (int d = 0; d < o.head_dim; ++d) {
        float sum = 0;
        for (int32_t t : g) sum += data.keys[(h * n + t) * o.head_dim + d];
        clusters->centroids[h].push_back(sum / static_cast<float>(g.size()));
      }
      clusters->members[h].insert(clusters->members[h].end(), g.begin(), g.end());
      clusters->cluster_off[h].push_back(static_cast<int32_t>(clusters->members[h].size()));
    }
  }
  int64_t summary[2] = {0, 0};
  for (double rescore : {0.0, 2.0}) {
    SCOPED_TRACE(::testing::PrintToString(rescore));
    o.rescore_factor = rescore;
    auto sel = MakeBoundarySelector(o, clusters);
    ASSERT_TRUE(sel.ok()) << sel.status();
    ASSERT_TRUE((*sel)->Prefill(prompt, n).ok());
    auto s = (*sel)->Select(data.Query(3.f));
    ASSERT_TRUE(s.ok()) << s.status();
    CheckWellFormed(*s, o, n);
    EXPECT_TRUE(s->retrieved);
    for (int r = 0; r < o.kv_heads; ++r) {
      EXPECT_EQ(Covers(s->spans[r], 640, 656), rescore > 1.0) << "row " << r;
      EXPECT_EQ(Covers(s->spans[r], 320, 336), rescore <= 1.0) << "row " << r;
    }
    summary[rescore > 1.0] = s->summary_bytes;
  }
  // Two candidates for the one free page: the decoy's keys are read only to be rescored.
  EXPECT_EQ(summary[1] - summary[0], int64_t{o.kv_heads} * 16 * o.head_dim * 2);
}

// The masses of a ScoreRequest from first principles: keys by position ([kv_heads, n, d] bits),
// layout page p of head h holding positions LayoutPosition(c, h, l) for its layout indices l.
std::vector<std::vector<float>> MassesFor(const ScoreRequest& req, const PromptClusters& c,
                                          const SelectorOptions& o,
                                          const std::vector<uint16_t>& keys, int64_t n,
                                          const std::vector<uint16_t>& q) {
  const int P = o.page_tokens, d = o.head_dim, group = o.q_heads / o.kv_heads;
  std::vector<std::vector<float>> mass(req.pages.size());
  for (size_t h = 0; h < req.pages.size(); ++h) {
    const std::vector<int32_t>& pages = req.pages[h];
    if (pages.empty()) continue;
    std::vector<uint16_t> packed(pages.size() * P * d);
    std::vector<int32_t> indptr = {0, static_cast<int32_t>(pages.size())}, ids, len;
    for (size_t i = 0; i < pages.size(); ++i) {
      ids.push_back(static_cast<int32_t>(i));
      len.push_back(static_cast<int32_t>(std::min<int64_t>(req.tokens, int64_t{pages[i] + 1} * P) -
                                         int64_t{pages[i]} * P));
      for (int32_t t = 0; t < len.back(); ++t) {
        const int64_t pos = LayoutPosition(c, static_cast<int>(h), int64_t{pages[i]} * P + t);
        std::copy_n(keys.data() + (h * n + pos) * d, d, packed.data() + (i * P + t) * d);
      }
    }
    mass[h].resize(pages.size());
    kernels::PageMassParams p;
    p.kv =
        kernels::PackedPagedKV(o.dtype, static_cast<int32_t>(pages.size()), P, 1, d, packed.data());
    p.kv.stride_page = int64_t{P} * d;
    p.batch = 1;
    p.num_qo_heads = group;
    p.q = q.data() + h * group * d;
    p.indptr = indptr.data();
    p.indices = ids.data();
    p.page_len = len.data();
    p.reduce = o.group_reduce;
    p.mass = mass[h].data();
    EXPECT_TRUE(kernels::PageMassReference(p).ok());
  }
  return mass;
}

TEST(SelectorTest, BoundaryTwoPhaseSelectEqualsSelectAndFollowsTheMasses) {
  // Twin louiskv selectors; one selects in one call, the other in two halves with the masses
  // computed outside (as the decode worker does on its device). Same data as the centroid tie:
  // the candidates' masses decide between the decoy and the needle.
  const int64_t n = 2048;
  NeedleData data(n, 1200, 16, 12);
  for (int h = 0; h < data.kv_heads; ++h) {
    for (int64_t t = 480; t < 496; ++t) {
      for (int d = 0; d < data.dim; ++d) {
        data.keys[(h * n + t) * data.dim + d] = data.directions[h * data.dim + d];
      }
    }
  }
  const std::vector<uint16_t> prompt = data.Keys(0, n);
  SelectorOptions o = Options(16, 128);
  o.boundary_threshold = -1.f;  // one retrieval; later steps rank the resident set
  auto one = MakeSelector(Policy::kBoundary, o);
  auto two = MakeSelector(Policy::kBoundary, o);
  ASSERT_TRUE(one.ok() && two.ok());
  ASSERT_TRUE((*one)->Prefill(prompt, n).ok());
  ASSERT_TRUE((*two)->Prefill(prompt, n).ok());
  EXPECT_EQ((*two)->FinishSelect({}).status().code(), absl::StatusCode::kFailedPrecondition);
  auto clusters = static_cast<internal::BoundarySelector*>(two->get())->clusters();
  ASSERT_NE(clusters, nullptr);
  for (int step = 0; step < 3; ++step) {
    SCOPED_TRACE(step);
    const std::vector<uint16_t> q = data.Query(2.f + step, 0.1f * step);
    auto want = (*one)->Select(q);
    ASSERT_TRUE(want.ok()) << want.status();
    auto req = (*two)->BeginSelect(q);
    ASSERT_TRUE(req.ok()) << req.status();
    ASSERT_FALSE(req->empty());
    EXPECT_EQ(req->tokens, n);
    for (size_t h = 0; h < req->pages.size(); ++h) {
      EXPECT_LT(req->first_candidate[h], static_cast<int32_t>(req->pages[h].size()));
    }
    std::vector<std::vector<float>> mass = MassesFor(*req, *clusters, o, prompt, n, q);
    // Bad masses are refused and leave the selection begun.
    std::vector<std::vector<float>> short_mass = mass;
    short_mass[0].pop_back();
    EXPECT_EQ((*two)->FinishSelect(short_mass).status().code(), absl::StatusCode::kInvalidArgument);
    std::vector<std::vector<float>> nan_mass = mass;
    nan_mass[1][0] = NAN;
    EXPECT_EQ((*two)->FinishSelect(nan_mass).status().code(), absl::StatusCode::kInvalidArgument);
    auto got = (*two)->FinishSelect(mass);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->pages.indptr, want->pages.indptr);
    EXPECT_EQ(got->pages.indices, want->pages.indices);
    EXPECT_EQ(got->prefetch, want->prefetch);
    EXPECT_EQ(got->summary_bytes, want->summary_bytes);
    EXPECT_EQ(got->retrieved, want->retrieved);
    EXPECT_EQ((*two)->FinishSelect(mass).status().code(), absl::StatusCode::kFailedPrecondition);
  }
  // Masses that say the opposite of the keys (every candidate's mass reversed in rank) change
  // the choice: the step follows what the caller scored.
  const std::vector<uint16_t> q = data.Query(3.f);
  auto want = (*one)->Select(q);
  auto req = (*two)->BeginSelect(q);
  ASSERT_TRUE(want.ok() && req.ok());
  std::vector<std::vector<float>> mass = MassesFor(*req, *clusters, o, prompt, n, q);
  for (auto& m : mass) {
    for (float& x : m) x = 1.f - x;
  }
  auto flipped = (*two)->FinishSelect(mass);
  ASSERT_TRUE(flipped.ok());
  EXPECT_NE(flipped->pages.indices, want->pages.indices);
}

TEST(SelectorTest, BoundaryRescoringEveryResidentPageLetsTheExactMassesChoose) {
  // rescore_factor >= resident_factor: between retrievals every resident page not kept is a
  // candidate, whatever the estimate says, and the free budget goes to the best of them by the
  // masses the caller computed; no request is larger than MaxScoredPages.
  const int64_t n = 2048;
  NeedleData data(n, 1200, 16, 12);
  SelectorOptions o = Options(16, 128);  // 8 pages of budget
  o.boundary_threshold = -1.f;           // one retrieval; later steps choose among the resident
  o.resident_factor = 4.0;
  o.rescore_factor = 4.0;
  const int32_t budget = 8;
  const int64_t bound = MaxScoredPages(Policy::kBoundary, o, budget);
  EXPECT_EQ(MaxScoredPages(Policy::kQuest, o, budget), 0);
  SelectorOptions partial = o;
  partial.rescore_factor = 1.5;
  EXPECT_EQ(MaxScoredPages(Policy::kBoundary, partial, budget), 12);
  auto sel = MakeSelector(Policy::kBoundary, o);
  auto part = MakeSelector(Policy::kBoundary, partial);
  ASSERT_TRUE(sel.ok() && part.ok());
  ASSERT_TRUE((*sel)->Prefill(data.Keys(0, n), n).ok());
  ASSERT_TRUE((*part)->Prefill(data.Keys(0, n), n).ok());
  auto clusters = static_cast<internal::BoundarySelector*>(sel->get())->clusters();
  ASSERT_NE(clusters, nullptr);
  const std::vector<uint16_t> prompt = data.Keys(0, n);
  std::vector<std::vector<int32_t>> resident(o.kv_heads);
  std::mt19937 rng(7);
  std::normal_distribution<float> noise(0.f, 1.f);
  for (int step = 0; step < 4; ++step) {
    SCOPED_TRACE(step);
    // Step 0 aims at the needle; later ones are random, so the estimate and the masses differ.
    std::vector<uint16_t> q = data.Query(3.f);
    if (step > 0) {
      for (uint16_t& x : q) x = test_data::Half(noise(rng));
    }
    auto req = (*sel)->BeginSelect(q);
    auto preq = (*part)->BeginSelect(q);
    ASSERT_TRUE(req.ok() && preq.ok()) << req.status();
    std::vector<std::vector<float>> mass = MassesFor(*req, *clusters, o, prompt, n, q);
    for (int h = 0; h < o.kv_heads; ++h) {
      const std::vector<int32_t>& pages = req->pages[h];
      EXPECT_LE(static_cast<int64_t>(pages.size()), bound);
      if (step == 0) continue;
      // The candidates are the resident pages not kept this step, all of them.
      std::vector<int32_t> cand(pages.begin() + req->first_candidate[h], pages.end());
      std::vector<int32_t> kept(pages.begin(), pages.begin() + req->first_candidate[h]);
      std::vector<int32_t> want;
      for (int32_t p : resident[h]) {
        if (std::find(kept.begin(), kept.end(), p) == kept.end()) want.push_back(p);
      }
      std::sort(cand.begin(), cand.end());
      std::sort(want.begin(), want.end());
      EXPECT_EQ(cand, want) << "head " << h;
      EXPECT_GT(cand.size(), preq->pages[h].size() - preq->first_candidate[h]) << "head " << h;
    }
    auto got = (*sel)->FinishSelect(mass);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->retrieved, step == 0);
    for (int h = 0; h < o.kv_heads; ++h) {
      const std::vector<int32_t>& pages = req->pages[h];
      const int32_t first = req->first_candidate[h];
      std::vector<int32_t> attended(got->pages.indices.begin() + got->pages.indptr[h],
                                    got->pages.indices.begin() + got->pages.indptr[h + 1]);
      if (step == 0) {
        // What the retrieval makes resident: the attended pages and the first hints past them.
        resident[h] = attended;
        const int32_t extra = static_cast<int32_t>((o.resident_factor - 1.0) * budget);
        for (int32_t i = 0; i < extra && i < static_cast<int32_t>(got->prefetch[h].size()); ++i) {
          resident[h].push_back(got->prefetch[h][i]);
        }
        continue;
      }
      // The free budget holds the candidates of the largest masses.
      std::vector<size_t> order(pages.size() - first);
      std::iota(order.begin(), order.end(), size_t{0});
      std::stable_sort(order.begin(), order.end(),
                       [&](size_t a, size_t b) { return mass[h][first + a] > mass[h][first + b]; });
      std::vector<int32_t> want(pages.begin(), pages.begin() + first);
      for (size_t i = 0; i < order.size() && static_cast<int32_t>(want.size()) < budget; ++i) {
        want.push_back(pages[first + order[i]]);
      }
      std::sort(want.begin(), want.end());
      EXPECT_EQ(attended, want) << "head " << h;
    }
    std::vector<std::vector<float>> pmass = MassesFor(*preq, *clusters, partial, prompt, n, q);
    ASSERT_TRUE((*part)->FinishSelect(pmass).ok());
  }
}

class BoundaryClosedForm : public ::testing::TestWithParam<bool> {};

TEST_P(BoundaryClosedForm, StepsSelectWhatFinishSelectSelects) {
  // Twin louiskv selectors rescoring every resident page, fed the same tokens and queries: one
  // lists its pages (BeginSelect, FinishSelect), the other takes closed-form steps. At every
  // step (retrievals included) the closed form names the same pages to score, and the kept
  // pages plus BestByMass of the candidates' masses are what FinishSelect attends. With and
  // without trigger_late.
  const int64_t n = 2048, total = n + 48;
  NeedleData data(total, 1200, 16, 12);
  SelectorOptions o = Options(16, 256);  // 16 pages of budget
  o.boundary_threshold = 0.6f;           // some retrievals among the random queries
  o.window_pages = 2;
  o.trigger_late = GetParam();
  auto listed = MakeSelector(Policy::kBoundary, o);
  auto closed = MakeSelector(Policy::kBoundary, o);
  ASSERT_TRUE(listed.ok() && closed.ok());
  ASSERT_TRUE((*listed)->Prefill(data.Keys(0, n), n).ok());
  ASSERT_TRUE((*closed)->Prefill(data.Keys(0, n), n).ok());
  auto clusters = static_cast<internal::BoundarySelector*>(closed->get())->clusters();
  ASSERT_NE(clusters, nullptr);
  std::mt19937 rng(11);
  std::normal_distribution<float> noise(0.f, 1.f);
  std::vector<uint16_t> q = data.Query(3.f);
  int steady_steps = 0, retrievals = 0;
  for (int64_t t = n; t < total; ++t) {
    SCOPED_TRACE(t);
    ASSERT_TRUE((*listed)->Append(data.Keys(t, t + 1), 1).ok());
    ASSERT_TRUE((*closed)->Append(data.Keys(t, t + 1), 1).ok());
    DriftQuery(q, t, rng, noise);  // drifts slowly, with a jump now and then
    const std::vector<uint16_t> keys = data.Keys(0, t + 1);
    auto req = (*listed)->BeginSelect(q);
    auto creq = (*closed)->BeginSelect(q, /*closed_form=*/true);
    ASSERT_TRUE(req.ok() && creq.ok()) << req.status() << creq.status();
    auto want = (*listed)->FinishSelect(MassesFor(*req, *clusters, o, keys, t + 1, q));
    ASSERT_TRUE(want.ok()) << want.status();
    // Every step is in closed form, retrievals (the first one included) too: the ranking sets
    // the resident set, the masses choose.
    ASSERT_FALSE(creq->steady.empty());
    ++(creq->retrieved ? retrievals : steady_steps);
    EXPECT_EQ(creq->retrieved, want->retrieved);
    EXPECT_TRUE(creq->pages.empty());
    EXPECT_EQ((*closed)->FinishSelect({}).status().code(), absl::StatusCode::kFailedPrecondition);
    ASSERT_EQ(static_cast<int>(creq->steady.size()), o.kv_heads);
    // The closed form, listed: kept pages ascending, then the candidates.
    ScoreRequest expanded;
    expanded.tokens = creq->tokens;
    expanded.pages.resize(o.kv_heads);
    expanded.first_candidate.resize(o.kv_heads);
    for (int h = 0; h < o.kv_heads; ++h) {
      const SteadyRow& row = creq->steady[h];
      EXPECT_EQ(row.pages, (t + 1 + 15) / 16);
      std::vector<int32_t>& pages = expanded.pages[h];
      for (int32_t p = 0; p < row.sink_end; ++p) pages.push_back(p);
      for (int32_t p = row.window_begin; p < row.pages; ++p) pages.push_back(p);
      expanded.first_candidate[h] = static_cast<int32_t>(pages.size());
      const absl::Span<const int32_t> res = (*closed)->ResidentPages(h);
      ASSERT_LE(row.cand_end, static_cast<int32_t>(res.size()));
      pages.insert(pages.end(), res.begin() + row.cand_begin, res.begin() + row.cand_end);
      if (req->pages[h].empty()) {  // the listed form asks nothing when there is no candidate
        EXPECT_EQ(row.cand_begin, row.cand_end);
      } else {
        EXPECT_EQ(pages, req->pages[h]) << "head " << h;
        EXPECT_EQ(expanded.first_candidate[h], req->first_candidate[h]);
      }
    }
    const std::vector<std::vector<float>> mass = MassesFor(expanded, *clusters, o, keys, t + 1, q);
    for (int h = 0; h < o.kv_heads; ++h) {
      const SteadyRow& row = creq->steady[h];
      const int32_t first = expanded.first_candidate[h];
      std::vector<int32_t> attended(expanded.pages[h].begin(), expanded.pages[h].begin() + first);
      for (int32_t i : BestByMass(absl::MakeConstSpan(mass[h]).subspan(first), row.need)) {
        attended.push_back(expanded.pages[h][first + i]);
      }
      std::sort(attended.begin(), attended.end());
      const std::vector<int32_t> selected(want->pages.indices.begin() + want->pages.indptr[h],
                                          want->pages.indices.begin() + want->pages.indptr[h + 1]);
      EXPECT_EQ(attended, selected) << "head " << h;
    }
  }
  EXPECT_GT(steady_steps, 10);
  EXPECT_GT(retrievals, 1);
}

INSTANTIATE_TEST_SUITE_P(SelectorTest, BoundaryClosedForm, ::testing::Bool());

// Late reads: a selector that gets each step's query and key a step late whenever it can
// (CanStepLate) takes the same steps as one that gets them on time.
// With retrieve_late every step after the first can run late (its retrievals wait a step).
class BoundaryLateReads : public ::testing::TestWithParam<bool> {};

TEST_P(BoundaryLateReads, TakeTheStepsOfOnTimeReads) {
  const bool retrieve_late = GetParam();
  const int64_t n = 2048, total = n + 64;
  NeedleData data(total, 1200, 16, 12);
  SelectorOptions o = Options(16, 256);
  o.boundary_threshold = 0.6f;
  o.window_pages = 2;
  o.trigger_late = true;
  o.retrieve_late = retrieve_late;
  auto on_time = MakeSelector(Policy::kBoundary, o);
  auto late = MakeSelector(Policy::kBoundary, o);
  ASSERT_TRUE(on_time.ok() && late.ok());
  ASSERT_TRUE((*on_time)->Prefill(data.Keys(0, n), n).ok());
  ASSERT_TRUE((*late)->Prefill(data.Keys(0, n), n).ok());
  EXPECT_TRUE((*late)->TakesLateReads());
  std::mt19937 rng(5);
  std::normal_distribution<float> noise(0.f, 1.f);
  std::vector<uint16_t> q = data.Query(3.f), owed_q;
  int64_t owed_k = -1;  // the token whose key the late selector waits for
  int late_steps = 0, retrievals = 0;
  for (int64_t t = n; t < total; ++t) {
    SCOPED_TRACE(t);
    DriftQuery(q, t, rng, noise);
    ASSERT_TRUE((*on_time)->Append(data.Keys(t, t + 1), 1).ok());
    auto want = (*on_time)->BeginSelect(q, /*closed_form=*/true);
    ASSERT_TRUE(want.ok()) << want.status();
    // What the late caller reads back now: the last step's query and key.
    if (!owed_q.empty()) {
      ASSERT_TRUE((*late)->LateQuery(owed_q).ok());
    }
    if (owed_k >= 0) {
      ASSERT_TRUE((*late)->SupplyKeys(data.Keys(owed_k, owed_k + 1), 1).ok());
    }
    owed_q.clear();
    owed_k = -1;
    absl::StatusOr<ScoreRequest> got;
    if ((*late)->CanStepLate()) {
      ++late_steps;
      ASSERT_TRUE((*late)->AppendDeferred(1).ok());
      EXPECT_EQ((*late)->num_tokens(), t + 1);
      got = (*late)->BeginSelect({}, /*closed_form=*/true);
      owed_q = q;
      owed_k = t;
    } else {
      ASSERT_TRUE((*late)->Append(data.Keys(t, t + 1), 1).ok());
      got = (*late)->BeginSelect(q, /*closed_form=*/true);
    }
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->steady.size(), want->steady.size());
    EXPECT_EQ(got->retrieved, want->retrieved);
    retrievals += want->retrieved ? 1 : 0;
    for (size_t h = 0; h < want->steady.size(); ++h) {
      const SteadyRow &a = got->steady[h], &b = want->steady[h];
      EXPECT_EQ(std::tie(a.sink_end, a.window_begin, a.pages, a.cand_begin, a.cand_end, a.need),
                std::tie(b.sink_end, b.window_begin, b.pages, b.cand_begin, b.cand_end, b.need));
      const auto ra = (*late)->ResidentPages(static_cast<int>(h));
      const auto rb = (*on_time)->ResidentPages(static_cast<int>(h));
      EXPECT_EQ(std::vector<int32_t>(ra.begin(), ra.end()),
                std::vector<int32_t>(rb.begin(), rb.end()));
    }
  }
  EXPECT_GT(retrievals, 1);
  if (retrieve_late) {
    EXPECT_EQ(late_steps, total - n - 1);  // every step after the first
  } else {
    EXPECT_GT(late_steps, 20);  // the steps the trigger does not retrieve at, after the first
    EXPECT_LT(late_steps, total - n);
  }
}

INSTANTIATE_TEST_SUITE_P(SelectorTest, BoundaryLateReads, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& i) {
                           return i.param ? "RetrieveLate" : "RetrieveOnTime";
                         });

// retrieve_late moves each retrieval after the first one step later: the trigger fires at the
// same steps (it sees the same queries), the retrieval is ranked with the same query and plan,
// and the resident set it makes is the one the on-time selector made a step earlier; the step
// the trigger fires at chooses from the resident set it already had.
TEST(SelectorTest, BoundaryRetrieveLateTakesEachRetrievalAStepLater) {
  const int64_t n = 2048, total = n + 96;
  NeedleData data(total, 1200, 16, 12);
  SelectorOptions o = Options(16, 256);
  o.boundary_threshold = 0.6f;
  o.window_pages = 2;
  o.trigger_late = true;
  auto on_time = MakeSelector(Policy::kBoundary, o);
  o.retrieve_late = true;
  auto late = MakeSelector(Policy::kBoundary, o);
  ASSERT_TRUE(on_time.ok() && late.ok());
  ASSERT_TRUE((*on_time)->Prefill(data.Keys(0, n), n).ok());
  ASSERT_TRUE((*late)->Prefill(data.Keys(0, n), n).ok());
  auto resident = [&](const Selector& s) {
    std::vector<std::vector<int32_t>> r;
    for (int h = 0; h < o.kv_heads; ++h) {
      const auto p = s.ResidentPages(h);
      r.emplace_back(p.begin(), p.end());
    }
    return r;
  };
  std::mt19937 rng(9);
  std::normal_distribution<float> noise(0.f, 1.f);
  std::vector<uint16_t> q = data.Query(3.f);
  bool was_retrieved = false;  // the on-time selector retrieved at the last step
  std::vector<std::vector<int32_t>> was_resident;
  int retrievals = 0, moved = 0;
  for (int64_t t = n; t < total; ++t) {
    SCOPED_TRACE(t);
    DriftQuery(q, t, rng, noise);
    const auto late_before = resident(**late);
    ASSERT_TRUE((*on_time)->Append(data.Keys(t, t + 1), 1).ok());
    ASSERT_TRUE((*late)->Append(data.Keys(t, t + 1), 1).ok());
    auto a = (*on_time)->Select(q);
    auto b = (*late)->Select(q);
    ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
    const bool first = t == n;
    if (first) {
      EXPECT_TRUE(a->retrieved && b->retrieved);  // nothing resident yet: on time in both
      EXPECT_EQ(resident(**late), resident(**on_time));
    } else {
      EXPECT_EQ(b->retrieved, was_retrieved);
      if (was_retrieved) {
        EXPECT_EQ(resident(**late), was_resident);
        ++moved;
      } else {
        EXPECT_EQ(resident(**late), late_before);
      }
    }
    was_retrieved = a->retrieved && !first;
    retrievals += was_retrieved ? 1 : 0;
    was_resident = resident(**on_time);
  }
  EXPECT_GT(retrievals, 2);
  EXPECT_EQ(moved, retrievals - (was_retrieved ? 1 : 0));
}

TEST(SelectorTest, LateReadsRefuseWhatTheyCannotServe) {
  const int64_t n = 1024;
  NeedleData data(n + 8, 400, 16, 4);
  SelectorOptions o = Options(16, 128);
  const std::vector<uint16_t> q = data.Query(3.f);
  // retrieve_late needs trigger_late and no coverage trigger.
  {
    SelectorOptions bad = o;
    bad.retrieve_late = true;
    EXPECT_EQ(MakeSelector(Policy::kBoundary, bad).status().code(),
              absl::StatusCode::kInvalidArgument);
    bad.trigger_late = true;
    bad.coverage_threshold = 0.5f;
    EXPECT_EQ(MakeSelector(Policy::kBoundary, bad).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  // Without trigger_late (and for policies other than louiskv) keys are never deferred.
  for (Policy p : {Policy::kBoundary, Policy::kQuest}) {
    auto sel = MakeSelector(p, o);
    ASSERT_TRUE(sel.ok());
    ASSERT_TRUE((*sel)->Prefill(data.Keys(0, n), n).ok());
    EXPECT_FALSE((*sel)->TakesLateReads());
    EXPECT_EQ((*sel)->AppendDeferred(1).code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ((*sel)->num_tokens(), n);
  }
  o.trigger_late = true;
  auto sel = MakeSelector(Policy::kBoundary, o);
  ASSERT_TRUE(sel.ok());
  EXPECT_EQ((*sel)->AppendDeferred(1).code(), absl::StatusCode::kFailedPrecondition);  // no prompt
  ASSERT_TRUE((*sel)->Prefill(data.Keys(0, n), n).ok());
  EXPECT_TRUE((*sel)->TakesLateReads());
  // The first step has no earlier query for the trigger: it needs its own.
  EXPECT_FALSE((*sel)->CanStepLate());
  ASSERT_TRUE((*sel)->AppendDeferred(1).ok());
  EXPECT_EQ((*sel)->BeginSelect({}, true).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*sel)->BeginSelect(q, true).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*sel)->Select(q).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*sel)->Append(data.Keys(n, n + 1), 1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*sel)->SupplyKeys(data.Keys(n, n + 2), 2).code(), absl::StatusCode::kInvalidArgument);
  const std::vector<uint16_t> key = data.Keys(n, n + 1);
  EXPECT_EQ((*sel)->SupplyKeys(absl::MakeConstSpan(key).subspan(1), 1).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*sel)->LateQuery(q).code(), absl::StatusCode::kFailedPrecondition);  // none owed
  EXPECT_EQ((*sel)->num_tokens(), n + 1);
  ASSERT_TRUE((*sel)->SupplyKeys(data.Keys(n, n + 1), 1).ok());
  EXPECT_EQ((*sel)->SupplyKeys(data.Keys(n, n + 1), 1).code(),
            absl::StatusCode::kFailedPrecondition);  // nothing deferred any more
  auto first = (*sel)->BeginSelect(q, true);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->retrieved);
  // The same query again: the trigger will not fire, so the next step may run late.
  ASSERT_TRUE((*sel)->CanStepLate());
  ASSERT_TRUE((*sel)->AppendDeferred(1).ok());
  EXPECT_EQ((*sel)->BeginSelect(q, false).status().code(), absl::StatusCode::kFailedPrecondition);
  auto second = (*sel)->BeginSelect({}, true);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_FALSE(second->retrieved);
  EXPECT_FALSE(second->steady.empty());
  // Its query is owed now: no step until it is handed over (a bad one changes nothing).
  EXPECT_FALSE((*sel)->CanStepLate());
  EXPECT_EQ((*sel)->BeginSelect(q, true).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*sel)->LateQuery(absl::MakeConstSpan(q).subspan(1)).code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<uint16_t> inf = q;
  inf[3] = 0x7c00;
  EXPECT_EQ((*sel)->LateQuery(inf).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE((*sel)->LateQuery(q).ok());
  ASSERT_TRUE((*sel)->SupplyKeys(data.Keys(n + 1, n + 2), 1).ok());
  EXPECT_TRUE((*sel)->CanStepLate());
  // A query pointing elsewhere: the next step retrieves, so it needs its query and key.
  ASSERT_TRUE((*sel)->AppendDeferred(1).ok());
  ASSERT_TRUE((*sel)->BeginSelect({}, true).ok());
  ASSERT_TRUE((*sel)->LateQuery(data.Query(-3.f)).ok());
  ASSERT_TRUE((*sel)->SupplyKeys(data.Keys(n + 2, n + 3), 1).ok());
  EXPECT_FALSE((*sel)->CanStepLate());
  ASSERT_TRUE((*sel)->Append(data.Keys(n + 3, n + 4), 1).ok());
  auto third = (*sel)->BeginSelect(data.Query(-3.f), true);
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_TRUE(third->retrieved);
  EXPECT_EQ((*sel)->num_tokens(), n + 4);
}

TEST(SelectorTest, BestByMassTakesTheLargestTiesToTheEarlier) {
  const std::vector<float> mass = {0.5f, 2.f, 1.f, 2.f, 0.f, 1.f};
  EXPECT_EQ(BestByMass(mass, 0), std::vector<int32_t>{});
  EXPECT_EQ(BestByMass(mass, 1), std::vector<int32_t>({1}));
  EXPECT_EQ(BestByMass(mass, 3), std::vector<int32_t>({1, 2, 3}));  // 2 before 5 (equal masses)
  EXPECT_EQ(BestByMass(mass, 4), std::vector<int32_t>({1, 2, 3, 5}));
  EXPECT_EQ(BestByMass(mass, 9), std::vector<int32_t>({0, 1, 2, 3, 4, 5}));
}

TEST(SelectorTest, BoundaryWithoutTokenSpansSelectsTheSamePages) {
  const int64_t n = 2048;
  NeedleData data(n, 1200, 16, 12);
  SelectorOptions o = Options(16, 128);
  o.boundary_threshold = 0.5f;
  SelectorOptions lean = o;
  lean.token_spans = false;
  auto full = MakeSelector(Policy::kBoundary, o);
  auto pages_only = MakeSelector(Policy::kBoundary, lean);
  ASSERT_TRUE(full.ok() && pages_only.ok());
  ASSERT_TRUE((*full)->Prefill(data.Keys(0, n), n).ok());
  ASSERT_TRUE((*pages_only)->Prefill(data.Keys(0, n), n).ok());
  for (int step = 0; step < 4; ++step) {
    const std::vector<uint16_t> q = data.Query(1.f + step, 0.3f * step);
    auto a = (*full)->Select(q);
    auto b = (*pages_only)->Select(q);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(b->pages.indices, a->pages.indices);
    EXPECT_EQ(b->pages.indptr, a->pages.indptr);
    EXPECT_EQ(b->kv_bytes, a->kv_bytes);
    EXPECT_EQ(b->summary_bytes, a->summary_bytes);
    for (const auto& spans : b->spans) EXPECT_TRUE(spans.empty());
    for (const auto& spans : a->spans) EXPECT_FALSE(spans.empty());
  }
}

TEST(SelectorTest, PoliciesWithoutRescoringAskForNoMasses) {
  const int64_t n = 1024;
  NeedleData data(n, 400, 16, 12);
  for (Policy policy : {Policy::kQuest, Policy::kStreaming}) {
    SelectorOptions o = Options(16, 128);
    auto one = MakeSelector(policy, o);
    auto two = MakeSelector(policy, o);
    ASSERT_TRUE(one.ok() && two.ok());
    ASSERT_TRUE((*one)->Prefill(data.Keys(0, n), n).ok());
    ASSERT_TRUE((*two)->Prefill(data.Keys(0, n), n).ok());
    auto want = (*one)->Select(data.Query(3.f));
    auto req = (*two)->BeginSelect(data.Query(3.f));
    ASSERT_TRUE(want.ok() && req.ok());
    EXPECT_TRUE(req->empty());
    EXPECT_EQ((*two)->FinishSelect({{1.f}}).status().code(), absl::StatusCode::kInvalidArgument);
    auto got = (*two)->FinishSelect({});
    ASSERT_TRUE(got.ok());
    EXPECT_EQ(got->pages.indices, want->pages.indices);
  }
}

TEST(SelectorTest, BoundaryCoverageTriggerRetrievesWhenResidentMassDrops) {
  // The query moves from needle A to needle B with the boundary trigger held off. The resident
  // set (factor 1: the two free pages, both on A's cluster) misses B; the coverage trigger sees
  // that in the summaries and retrieves, and does not while the query stays on A.
  test_data::NeedleData a(2048, 480, 16, 4);
  test_data::NeedleData b(2048, 1200, 16, 6);
  for (int h = 0; h < 4; ++h) {
    for (int64_t t = 1200; t < 1216; ++t) {
      for (int d = 0; d < 64; ++d)
        a.keys[(h * 2048 + t) * 64 + d] = b.keys[(h * 2048 + t) * 64 + d];
    }
  }
  auto query = [&](float wa, float wb) {
    std::vector<uint16_t> q;
    for (int hq = 0; hq < 12; ++hq) {
      for (int d = 0; d < 64; ++d) {
        q.push_back(test_data::Half(wa * a.directions[(hq / 3) * 64 + d] +
                                    wb * b.directions[(hq / 3) * 64 + d]));
      }
    }
    return q;
  };
  for (float coverage : {0.f, 0.5f}) {
    SCOPED_TRACE(::testing::PrintToString(coverage));
    SelectorOptions o = Options(16, 64);  // sink, window and two free pages
    o.boundary_threshold = -1.f;          // the boundary trigger fires only on the first step
    o.resident_factor = 1.0;
    o.coverage_threshold = coverage;
    auto sel = MakeSelector(Policy::kBoundary, o);
    ASSERT_TRUE(sel.ok());
    ASSERT_TRUE((*sel)->Prefill(a.Keys(0, 2040), 2040).ok());
    ASSERT_TRUE((*sel)->Append(a.Keys(2040, 2041), 1).ok());
    auto first = (*sel)->Select(query(3.f, 0.f));
    ASSERT_TRUE(first.ok());
    EXPECT_TRUE(first->retrieved);
    ASSERT_TRUE((*sel)->Append(a.Keys(2041, 2042), 1).ok());
    auto same = (*sel)->Select(query(3.f, 0.f));
    ASSERT_TRUE(same.ok());
    EXPECT_FALSE(same->retrieved);
    EXPECT_EQ(same->summary_bytes > 0, coverage > 0.f);  // the scan that checks coverage
    ASSERT_TRUE((*sel)->Append(a.Keys(2042, 2043), 1).ok());
    auto moved = (*sel)->Select(query(0.f, 3.f));
    ASSERT_TRUE(moved.ok());
    CheckWellFormed(*moved, o, 2043);
    EXPECT_EQ(moved->retrieved, coverage > 0.f);
    for (int r = 0; r < 4; ++r) {
      EXPECT_TRUE(Covers(first->spans[r], 480, 496));
      EXPECT_TRUE(Covers(same->spans[r], 480, 496));
      EXPECT_EQ(Covers(moved->spans[r], 1200, 1216), coverage > 0.f) << "row " << r;
    }
  }
}

TEST(SelectorTest, OneFreePageGoesToTheNeedle) {
  // Budget for one page beyond sink and window: it must go to the needle, and hints elsewhere.
  NeedleData data(1024, 320, 16, 8);
  for (Policy p : {Policy::kQuest, Policy::kOracle}) {
    SelectorOptions o = Options(16, 48);  // sink + window + 1
    auto sel = MakeSelector(p, o);
    ASSERT_TRUE(sel.ok());
    ASSERT_TRUE((*sel)->Prefill(data.Keys(0, 1024), 1024).ok());
    auto s = (*sel)->Select(data.Query(3.f));
    ASSERT_TRUE(s.ok());
    for (int r = 0; r < 4; ++r) {
      EXPECT_EQ(s->pages.indptr[r + 1] - s->pages.indptr[r], 3);
      EXPECT_TRUE(Covers(s->spans[r], 320, 336));
      ASSERT_FALSE(s->prefetch[r].empty());
      EXPECT_NE(s->prefetch[r][0], 320 / 16);  // hints are never already selected
    }
  }
}

TEST(SelectorTest, RejectsBadOptions) {
  SelectorOptions o;
  o.q_heads = 10;  // not a multiple of 4
  EXPECT_EQ(MakeSelector(Policy::kQuest, o).status().code(), absl::StatusCode::kInvalidArgument);
  o = SelectorOptions();
  o.page_tokens = 24;
  EXPECT_EQ(MakeSelector(Policy::kQuest, o).status().code(), absl::StatusCode::kInvalidArgument);
  o = SelectorOptions();
  o.streaming_kv_heads = {4};
  EXPECT_EQ(MakeSelector(Policy::kQuest, o).status().code(), absl::StatusCode::kInvalidArgument);
  o = SelectorOptions();
  o.budget_tokens = 8;
  EXPECT_EQ(MakeSelector(Policy::kQuest, o).status().code(), absl::StatusCode::kInvalidArgument);
  o = SelectorOptions();
  o.rescore_factor = -1.0;
  EXPECT_EQ(MakeSelector(Policy::kBoundary, o).status().code(), absl::StatusCode::kInvalidArgument);
  o = SelectorOptions();
  o.coverage_threshold = 1.5f;
  EXPECT_EQ(MakeSelector(Policy::kBoundary, o).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(ParsePolicy("nope").ok());
  EXPECT_EQ(*ParsePolicy("louiskv"), Policy::kBoundary);
}

TEST(SelectorTest, RejectsBadInputAndChangesNothing) {
  for (Policy policy : {Policy::kOracle, Policy::kQuest, Policy::kHierarchical, Policy::kBoundary,
                        Policy::kAnn, Policy::kStreaming}) {
    SCOPED_TRACE(std::string(PolicyName(policy)));
    NeedleData data(512, 100, 16, 2);
    SelectorOptions o = Options(16, 128);
    auto made = MakeSelector(policy, o);
    ASSERT_TRUE(made.ok());
    Selector& sel = **made;
    // Before any prompt.
    EXPECT_EQ(sel.Select(data.Query(1.f)).status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(sel.Append(data.Keys(0, 1), 1).code(), absl::StatusCode::kFailedPrecondition);
    // Empty sequence and wrong dims.
    EXPECT_EQ(sel.Prefill({}, 0).code(), absl::StatusCode::kInvalidArgument);
    std::vector<uint16_t> keys = data.Keys(0, 64);
    EXPECT_EQ(sel.Prefill(keys, 63).code(), absl::StatusCode::kInvalidArgument);
    keys.pop_back();
    EXPECT_EQ(sel.Prefill(keys, 64).code(), absl::StatusCode::kInvalidArgument);
    std::vector<uint16_t> inf = data.Keys(0, 64);
    inf[5] = test_data::Half(INFINITY);
    EXPECT_EQ(sel.Prefill(inf, 64).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(sel.num_tokens(), 0);
    // A budget (128 tokens) larger than the context (100 tokens).
    ASSERT_TRUE(sel.Prefill(data.Keys(0, 100), 100).ok());
    auto too_big = sel.Select(data.Query(1.f));
    EXPECT_EQ(too_big.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(too_big.status().message().find("larger than the visible context"),
              std::string::npos);
    ASSERT_TRUE(sel.Append(data.Keys(100, 512), 412).ok());
    EXPECT_EQ(sel.Prefill(data.Keys(0, 1), 1).code(), absl::StatusCode::kFailedPrecondition);
    // Wrong query size, non-finite query.
    std::vector<uint16_t> q = data.Query(1.f);
    q.pop_back();
    EXPECT_EQ(sel.Select(q).status().code(), absl::StatusCode::kInvalidArgument);
    q = data.Query(1.f);
    q[0] = test_data::Half(NAN);
    EXPECT_EQ(sel.Select(q).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(sel.num_tokens(), 512);
    auto ok = sel.Select(data.Query(3.f));
    ASSERT_TRUE(ok.ok()) << ok.status();
    CheckWellFormed(*ok, o, 512);
  }
}

TEST(SelectorTest, BudgetBelowAlwaysKeptIsAnError) {
  NeedleData data(512, 100, 16, 2);
  SelectorOptions o = Options(16, 32);
  o.sink_pages = 2;
  o.window_pages = 2;
  auto sel = MakeSelector(Policy::kQuest, o);
  ASSERT_TRUE(sel.ok());
  ASSERT_TRUE((*sel)->Prefill(data.Keys(0, 512), 512).ok());
  EXPECT_EQ((*sel)->Select(data.Query(1.f)).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace pagoda::retriever

namespace pagoda::retriever {
namespace {

TEST(PromptClustersTest, SharedClustersGiveTheSameSelections) {
  test_data::NeedleData data(2048, 900, 16, 4);
  SelectorOptions o;
  o.page_tokens = 32;
  o.budget_tokens = 256;
  auto clusters = ClusterPrompt(o, data.Keys(0, 2000), 2000);
  ASSERT_TRUE(clusters.ok()) << clusters.status();
  EXPECT_EQ((*clusters)->num_clusters, (2000 / 32 * 32 - 32 - 32) / o.cluster_tokens);
  for (int h = 0; h < o.kv_heads; ++h) {
    // Every clustered position appears once.
    std::vector<int32_t> m = (*clusters)->members[h];
    std::sort(m.begin(), m.end());
    ASSERT_EQ(m.size(), static_cast<size_t>((*clusters)->natural_begin - 32));
    for (size_t i = 0; i < m.size(); ++i) ASSERT_EQ(m[i], static_cast<int32_t>(32 + i));
  }
  auto own = MakeSelector(Policy::kBoundary, o);
  auto shared = MakeBoundarySelector(o, *clusters);
  ASSERT_TRUE(own.ok() && shared.ok());
  ASSERT_TRUE((*own)->Prefill(data.Keys(0, 2000), 2000).ok());
  ASSERT_TRUE((*shared)->Prefill(data.Keys(0, 2000), 2000).ok());
  for (int64_t t = 2000; t < 2006; ++t) {
    ASSERT_TRUE((*own)->Append(data.Keys(t, t + 1), 1).ok());
    ASSERT_TRUE((*shared)->Append(data.Keys(t, t + 1), 1).ok());
    const float tilt = static_cast<float>(t - 2000);
    auto a = (*own)->Select(data.Query(3.f, tilt));
    auto b = (*shared)->Select(data.Query(3.f, tilt));
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a->pages.indices, b->pages.indices);
    EXPECT_EQ(a->retrieved, b->retrieved);
  }
  // Clusters of another prompt (one key differs) or other options are refused, state unchanged.
  std::vector<uint16_t> other = data.Keys(0, 2000);
  other[12345] ^= 1;
  auto wrong = MakeBoundarySelector(o, *clusters);
  ASSERT_TRUE(wrong.ok());
  EXPECT_EQ((*wrong)->Prefill(other, 2000).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*wrong)->num_tokens(), 0);
  SelectorOptions o16 = o;
  o16.page_tokens = 16;
  auto mismatched = MakeBoundarySelector(o16, *clusters);
  ASSERT_TRUE(mismatched.ok());
  EXPECT_EQ((*mismatched)->Prefill(data.Keys(0, 2000), 2000).code(),
            absl::StatusCode::kInvalidArgument);
}

// Windowed clustering: every cluster holds tokens of one window only, each window has its own
// window / cluster_tokens clusters, the layout still covers every clustered position once, and
// the selector still finds the needle. Clusters of another window size are refused.
TEST(PromptClustersTest, WindowedClustersStayInsideTheirWindows) {
  test_data::NeedleData data(2048, 900, 16, 4);
  SelectorOptions o;
  o.page_tokens = 32;
  o.budget_tokens = 256;
  o.cluster_window_tokens = 512;
  auto clusters = ClusterPrompt(o, data.Keys(0, 2000), 2000);
  ASSERT_TRUE(clusters.ok()) << clusters.status();
  const PromptClusters& c = **clusters;
  const int32_t clustered = static_cast<int32_t>(c.natural_begin - c.sink_tokens);
  ASSERT_EQ(clustered, 1920);  // [32, 1952): the tail from 1952 (2000 - a window page, aligned)
  // Windows of 512, 512, 512 and 384 tokens.
  EXPECT_EQ(c.num_clusters, 3 * (512 / o.cluster_tokens) + 384 / o.cluster_tokens);
  for (int h = 0; h < o.kv_heads; ++h) {
    std::vector<int32_t> all;
    for (int32_t k = 0; k < c.num_clusters; ++k) {
      const int32_t b = c.cluster_off[h][k], e = c.cluster_off[h][k + 1];
      for (int32_t i = b; i < e; ++i) {
        EXPECT_EQ((c.members[h][i] - c.sink_tokens) / 512, (c.members[h][b] - c.sink_tokens) / 512)
            << "cluster " << k << " of head " << h << " spans two windows";
        all.push_back(c.members[h][i]);
      }
    }
    std::sort(all.begin(), all.end());
    ASSERT_EQ(all.size(), static_cast<size_t>(clustered));
    for (size_t i = 0; i < all.size(); ++i) ASSERT_EQ(all[i], static_cast<int32_t>(32 + i));
  }
  auto sel = MakeBoundarySelector(o, *clusters);
  ASSERT_TRUE(sel.ok());
  ASSERT_TRUE((*sel)->Prefill(data.Keys(0, 2000), 2000).ok());
  ASSERT_TRUE((*sel)->Append(data.Keys(2000, 2001), 1).ok());
  auto got = (*sel)->Select(data.Query(3.f, 0.f));
  ASSERT_TRUE(got.ok());
  bool needle = false;
  for (int h = 0; h < o.kv_heads; ++h) {
    for (const TokenSpan& s : got->spans[h]) needle = needle || (s.begin <= 900 && 900 < s.end);
  }
  EXPECT_TRUE(needle);
  SelectorOptions whole = o;
  whole.cluster_window_tokens = 0;
  auto mismatched = MakeBoundarySelector(whole, *clusters);
  ASSERT_TRUE(mismatched.ok());
  EXPECT_EQ((*mismatched)->Prefill(data.Keys(0, 2000), 2000).code(),
            absl::StatusCode::kInvalidArgument);
  // A k-means runner (a device's) is called once per window; one that runs the reference gives
  // the same clusters, and its error is ClusterPrompt's.
  int calls = 0;
  auto via =
      ClusterPrompt(o, data.Keys(0, 2000), 2000, [&](const kernels::KMeansParams& p, int iters) {
        ++calls;
        return kernels::KMeansReference(p, iters);
      });
  ASSERT_TRUE(via.ok()) << via.status();
  EXPECT_EQ(calls, 4);
  EXPECT_EQ((*via)->members, c.members);
  EXPECT_EQ((*via)->cluster_off, c.cluster_off);
  auto failed = ClusterPrompt(o, data.Keys(0, 2000), 2000, [](const kernels::KMeansParams&, int) {
    return absl::ResourceExhaustedError("device full");
  });
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kResourceExhausted);
  for (int bad : {-32, 48, 16}) {  // negative, not a multiple of the page, under one page
    SelectorOptions b = o;
    b.cluster_window_tokens = bad;
    EXPECT_EQ(ClusterPrompt(b, data.Keys(0, 2000), 2000).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

}  // namespace
}  // namespace pagoda::retriever
