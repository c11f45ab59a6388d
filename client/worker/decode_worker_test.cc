// DecodeWorker over a real embedded Store (host + SSD tiers, RocksDB) with the CPU backend.
//
// K, V and q are functions of (layer, position, token id), so equal prompts give equal pages and
// a shadow model in the test computes the exact attention every output must match.
#include "pagoda/client/decode_worker.h"

#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "pagoda/kernels/dtype.h"
#include "pagoda/kernels/reference.h"
#include "pagoda/kvstore/prefix.h"
#include "pagoda/retriever/selector.h"
#include "worker_test_util.h"

namespace pagoda {
namespace {

using namespace worker_test;  // NOLINT: the shared test helpers

TEST(DecodeWorker, WholeContextBudgetEqualsDenseAcrossEvictions) {
  // Host-tier segments prepared on demand and all prepared at Create: the same outputs.
  for (int64_t prepare : {0, -1}) {
    SCOPED_TRACE(prepare);
    TempDir dir;
    auto store = OpenStore(dir.path());
    // 28 slots per head: one layer of the batch fits (<= 19 pages + 6 open pages), both layers do
    // not, so pages are evicted from the pool and fetched back from the store (verified).
    DecodeWorkerOptions o = Options(retriever::Policy::kQuest, 4096, 28);
    o.prepare_host_bytes = prepare;
    auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
    ASSERT_TRUE(w.ok()) << w.status();
    Driver drv(w->get());
    std::vector<SequenceId> ids = {drv.Open(Prompt(9, 1)), drv.Open(Prompt(17, 2)),
                                   drv.Open(Prompt(4, 3))};
    int64_t fetched = 0;
    for (int step = 0; step < 14; ++step) {
      std::vector<std::vector<uint16_t>> outs;
      auto stats = drv.Step(ids, {step, step + 1, step + 2}, &outs);
      ASSERT_TRUE(stats.ok()) << stats.status();
      for (const absl::Status& s : stats->sequence_status) ASSERT_TRUE(s.ok()) << s;
      fetched += stats->fetched_head_pages;
      EXPECT_EQ(stats->verify_failures, 0);
      for (int l = 0; l < kLayers; ++l) {
        for (int b = 0; b < 3; ++b) {
          EXPECT_LT(drv.Error(ids[b], b, l, outs[l], /*dense=*/true), kTol) << step << " " << b;
        }
      }
    }
    EXPECT_GT(fetched, 0);
    EXPECT_GT((*w)->Stats().pool_evictions, 0);
    ASSERT_TRUE((*w)->Flush().ok());
    EXPECT_GT((*w)->Stats().pages_committed, 0);
  }
}

class PolicyTest : public ::testing::TestWithParam<retriever::Policy> {
 protected:
  static void SparseOutputIsAttentionOverTheAttendedPages(retriever::Policy policy, bool to_pool);
};

// Also with prefill writing the prompt's pages into the pool (prefill_to_pool), whose slots the
// rows remember as hints before louiskv's layout gives some page ids another meaning.
TEST_P(PolicyTest, SparseOutputIsAttentionOverTheAttendedPages) {
  for (const bool to_pool : {false, true}) {
    SCOPED_TRACE(to_pool ? "prefill_to_pool" : "prefill to the store only");
    SparseOutputIsAttentionOverTheAttendedPages(GetParam(), to_pool);
  }
}

void PolicyTest::SparseOutputIsAttentionOverTheAttendedPages(retriever::Policy policy,
                                                             bool to_pool) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  DecodeWorkerOptions o = Options(policy, 5 * kPage, 64);
  o.prefill_to_pool = to_pool;
  auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(w.ok()) << w.status();
  Driver drv(w->get());
  std::vector<SequenceId> ids = {drv.Open(Prompt(61, 4)), drv.Open(Prompt(45, 5))};
  int64_t retrievals = 0;
  for (int step = 0; step < 10; ++step) {
    std::vector<std::vector<uint16_t>> outs;
    auto stats = drv.Step(ids, {7 * step, 7 * step + 3}, &outs);
    ASSERT_TRUE(stats.ok()) << stats.status();
    retrievals += stats->retrievals;
    for (const absl::Status& s : stats->sequence_status) ASSERT_TRUE(s.ok()) << s;
    for (int l = 0; l < kLayers; ++l) {
      for (int b = 0; b < 2; ++b) {
        auto rows = (*w)->LastRows(ids[b], l);
        ASSERT_TRUE(rows.ok());
        const int32_t cur = static_cast<int32_t>((drv.tokens(ids[b]).size() - 1) / kPage);
        for (const auto& row : *rows) {
          ASSERT_FALSE(row.empty());
          EXPECT_EQ(row.back(), cur);                          // the open page is always attended
          EXPECT_LE(static_cast<int64_t>(row.size()), 5 + 1);  // budget + moving window
          EXPECT_TRUE(std::is_sorted(row.begin(), row.end()));
        }
        EXPECT_LT(drv.Error(ids[b], b, l, outs[l], /*dense=*/false), kTol);
      }
    }
  }
  // Selections that ran afresh: quest every step; lserve every reuse_steps-th (4) — a step that
  // serves the last choice again is not a retrieval; louiskv when its trigger fires.
  if (policy == retriever::Policy::kQuest) {
    EXPECT_EQ(retrievals, 10 * kLayers * 2);
  } else if (policy == retriever::Policy::kHierarchical) {
    EXPECT_EQ(retrievals, 3 * kLayers * 2);
  } else if (policy == retriever::Policy::kBoundary) {
    EXPECT_GT(retrievals, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Policies, PolicyTest,
                         ::testing::Values(retriever::Policy::kQuest, retriever::Policy::kBoundary,
                                           retriever::Policy::kHierarchical,
                                           retriever::Policy::kStreaming, retriever::Policy::kAnn),
                         [](const auto& info) {
                           return std::string(retriever::PolicyName(info.param));
                         });

// Policy quest selects on the backend (batched, over the summaries the worker mirrors there); the
// retriever's CPU Quest selector, fed the same keys and queries, is the reference it must match.
TEST(DecodeWorker, QuestOnTheBackendSelectsWhatTheRetrieverSelects) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  const DecodeWorkerOptions o = Options(retriever::Policy::kQuest, 5 * kPage, 64);
  auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(w.ok()) << w.status();
  Driver drv(w->get());
  const std::vector<std::vector<int32_t>> prompts = {Prompt(61, 4), Prompt(45, 5)};
  std::vector<SequenceId> ids;
  // The second prompt comes as strided views: its staged pages are summarized on the host.
  for (size_t i = 0; i < prompts.size(); ++i) {
    ids.push_back(drv.Open(prompts[i], nullptr, i == 0 ? 7 : 13, /*strided=*/i == 1));
  }
  std::vector<RefSelectors> ref;
  for (const auto& p : prompts) ref.push_back(ReferenceSelectors(retriever::Policy::kQuest, o, p));
  // The newest token of `id` joins the reference selectors `sels` (one per layer); the worker's
  // rows of every layer must be what they select for that token's query.
  auto expect_selects = [&](SequenceId id, RefSelectors& sels, const std::string& where) {
    for (int l = 0; l < kLayers; ++l) {
      auto want = ReferenceStep(*sels[l], l, drv.tokens(id));
      ASSERT_TRUE(want.ok()) << want.status();
      auto rows = (*w)->LastRows(id, l);
      ASSERT_TRUE(rows.ok());
      for (int h = 0; h < kKv; ++h) {
        std::vector<int32_t> expect(want->pages.indices.begin() + want->pages.indptr[h],
                                    want->pages.indices.begin() + want->pages.indptr[h + 1]);
        std::sort(expect.begin(), expect.end());
        EXPECT_EQ((*rows)[h], expect) << where << ", layer " << l << ", head " << h;
      }
    }
  };
  for (int step = 0; step < 12; ++step) {
    auto stats = drv.Step(ids, {11 * step, 11 * step + 5});
    ASSERT_TRUE(stats.ok()) << stats.status();
    for (const absl::Status& s : stats->sequence_status) ASSERT_TRUE(s.ok()) << s;
    EXPECT_EQ(stats->retrievals, 2 * kLayers);
    for (int b = 0; b < 2; ++b) {
      expect_selects(ids[b], ref[b], "step " + std::to_string(step) + " seq " + std::to_string(b));
    }
  }
  // A fork's summaries are copied on the backend from its parent's: it selects what a selector
  // built from its whole context selects, and so does its parent after it.
  auto child = (*w)->Fork(ids[0]);
  ASSERT_TRUE(child.ok()) << child.status();
  drv.Forked(ids[0], *child);
  ref.push_back(ReferenceSelectors(retriever::Policy::kQuest, o, drv.tokens(*child)));
  for (int step = 0; step < 6; ++step) {
    auto stats = drv.Step({ids[0], *child}, {900 + step, 700 + 3 * step});
    ASSERT_TRUE(stats.ok()) << stats.status();
    expect_selects(ids[0], ref[0], "after fork, parent, step " + std::to_string(step));
    expect_selects(*child, ref[2], "after fork, child, step " + std::to_string(step));
  }
  // Quest keeps its summaries on the backend (one table row per page), no host selector.
  const WorkerStats st = (*w)->Stats();
  EXPECT_EQ(st.selector_host_bytes, 0);
  EXPECT_GE(st.summary_table_bytes, int64_t{kLayers} * (61 + 45 + 61) / kPage * kKv * kDim * 4);
}

// louiskv selects in a cluster-ordered layout, whose clustered pages the worker writes as store
// pages of their own: it attends exactly the positions the retriever's boundary selector (fed the
// same keys and queries) selects, equal prompts share those pages (one pool slot), a fork clusters
// its own context, and a damaged layout page is never attended.
// With the given rescore factor (below the resident factor 4: the best candidates by the
// estimate; at it: every resident page).
void ExpectLouiskvAttendsWhatTheRetrieverSelects(double rescore_factor, bool trigger_late,
                                                 bool retrieve_late = false) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  DecodeWorkerOptions o = Options(retriever::Policy::kBoundary, 5 * kPage, 96);
  o.selector.boundary_threshold = -0.1f;  // random queries: retrieve now and then
  o.selector.rescore_factor = rescore_factor;
  // The reference selectors read every query and key on time; the worker's read them a step late
  // whenever they can: the same steps.
  o.selector.trigger_late = trigger_late;
  o.selector.retrieve_late = retrieve_late;
  auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(w.ok()) << w.status();
  Driver drv(w->get());
  // Two sequences with one prompt (written once, shared) and one with another.
  const std::vector<std::vector<int32_t>> prompts = {Prompt(61, 4), Prompt(61, 4), Prompt(45, 5)};
  std::vector<SequenceId> ids;
  for (const auto& p : prompts) ids.push_back(drv.Open(p, nullptr, 13));
  ASSERT_TRUE((*w)->Flush().ok());
  // 61 tokens: clustered pages [1, 14) (sinks 1 page, the tail from 56 natural); 45: [1, 10).
  EXPECT_EQ((*w)->Stats().layout_pages, kLayers * (13 + 13 + 9));
  const int64_t reused_before = (*w)->Stats().pages_reused;
  EXPECT_GE(reused_before, kLayers * 13);  // the second prompt's layout pages were stored

  std::vector<RefSelectors> ref;
  for (const auto& p : prompts) {
    ref.push_back(ReferenceSelectors(retriever::Policy::kBoundary, o, p));
  }
  auto expect_selects = [&](SequenceId id, RefSelectors& sels, const std::string& where) {
    for (int l = 0; l < kLayers; ++l) {
      auto want = ReferenceStep(*sels[l], l, drv.tokens(id));
      ASSERT_TRUE(want.ok()) << want.status();
      auto got = (*w)->AttendedPositions(id, l);
      ASSERT_TRUE(got.ok());
      for (int h = 0; h < kKv; ++h) {
        std::vector<int64_t> expect;
        for (const retriever::TokenSpan& span : want->spans[h]) {
          for (int64_t x = span.begin; x < span.end; ++x) expect.push_back(x);
        }
        EXPECT_EQ((*got)[h], expect) << where << ", layer " << l << ", head " << h;
      }
    }
  };
  int64_t retrievals = 0, shared = 0, chosen = 0, late = 0;
  for (int step = 0; step < 16; ++step) {
    std::vector<std::vector<uint16_t>> outs;
    auto stats = drv.Step(ids, {11 * step, 11 * step, 11 * step + 5}, &outs);
    ASSERT_TRUE(stats.ok()) << stats.status();
    for (const absl::Status& s : stats->sequence_status) ASSERT_TRUE(s.ok()) << s;
    retrievals += stats->retrievals;
    shared += stats->shared_head_pages;
    chosen += stats->chosen_on_backend;
    late += stats->late_reads;
    if (!retrieve_late) {
      EXPECT_LE(stats->retrievals + stats->late_reads, 3 * kLayers);  // a late step never retrieves
    }
    EXPECT_LE(stats->retrievals, 3 * kLayers);
    EXPECT_LE(stats->chosen_on_backend, 3 * kLayers);
    for (size_t b = 0; b < ids.size(); ++b) {
      expect_selects(ids[b], ref[b], "step " + std::to_string(step) + " seq " + std::to_string(b));
      for (int l = 0; l < kLayers; ++l) {
        EXPECT_LT(drv.Error(ids[b], static_cast<int>(b), l, outs[l], /*dense=*/false), kTol);
      }
    }
  }
  EXPECT_GT(retrievals, 3 * kLayers);  // the first step's, and later ones
  EXPECT_LT(retrievals, 16 * 3 * kLayers);
  // Rescoring every resident page, every step chooses on the backend (closed form, retrievals
  // included); a partial rescoring lists its candidates and finishes on the host.
  if (rescore_factor >= o.selector.resident_factor) {
    EXPECT_EQ(chosen, 16 * 3 * kLayers);
    EXPECT_GT((*w)->Stats().held_head_pages, 0);  // their resident candidates stay in the pool
  } else {
    EXPECT_EQ(chosen, 0);
    EXPECT_EQ((*w)->Stats().held_head_pages, 0);
  }
  EXPECT_GT(shared, 0);  // the equal prompts read one slot per shared head-page
  if (retrieve_late) {
    EXPECT_EQ(late, 15 * 3 * kLayers);  // every step but the first
  } else if (trigger_late && rescore_factor >= o.selector.resident_factor) {
    EXPECT_EQ(late, 16 * 3 * kLayers - retrievals);  // every step but the retrievals
  } else {
    EXPECT_EQ(late, 0);
  }
  // What ids[0] attended last stays readable while other sequences step the same layers (a
  // choice left on the backend is read back before the layer's next choice replaces it).
  std::vector<std::vector<std::vector<int64_t>>> last0;
  for (int l = 0; l < kLayers; ++l) {
    auto a = (*w)->AttendedPositions(ids[0], l);
    ASSERT_TRUE(a.ok()) << a.status();
    last0.push_back(*a);
  }
  // A fork clusters its whole context as its prompt, as a selector built from it does.
  auto child = (*w)->Fork(ids[2]);
  ASSERT_TRUE(child.ok()) << child.status();
  drv.Forked(ids[2], *child);
  ref.push_back(ReferenceSelectors(retriever::Policy::kBoundary, o, drv.tokens(*child)));
  for (int step = 0; step < 6; ++step) {
    auto stats = drv.Step({ids[2], *child}, {900 + step, 700 + 3 * step});
    ASSERT_TRUE(stats.ok()) << stats.status();
    for (const absl::Status& s : stats->sequence_status) ASSERT_TRUE(s.ok()) << s;
    expect_selects(ids[2], ref[2], "after fork, parent, step " + std::to_string(step));
    expect_selects(*child, ref[3], "after fork, child, step " + std::to_string(step));
  }
  for (int l = 0; l < kLayers; ++l) {
    auto a = (*w)->AttendedPositions(ids[0], l);
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_EQ(*a, last0[l]) << "layer " << l;
  }
}

// Rows re-select (quest every step, or when its trigger fires) in pools from one layer's need
// upwards, the prompts' pages in the pool from the start or not: a row that lists the same pages
// again takes its memo of their slots while nothing of its KV head was evicted since, and any
// other row's new pages may evict what a memo named. Every output must stay exact attention over
// what the row attended.
TEST(DecodeWorker, RowsReselectingInAFullPoolAttendExactly) {
  int64_t evictions = 0, steps = 0;
  for (float threshold : {2.f, 0.5f, 0.1f}) {  // 2: no trigger
    for (bool to_pool : {false, true}) {
      for (int32_t slots : {20, 22, 24, 27, 30, 34, 40, 48}) {
        SCOPED_TRACE(absl::StrCat(threshold, " ", to_pool, " ", slots));
        TempDir dir;
        auto store = OpenStore(dir.path());
        DecodeWorkerOptions o = Options(retriever::Policy::kQuest, 8 * kPage, slots);
        o.boundary_trigger = threshold <= 1.f;
        o.boundary_threshold = std::min(threshold, 1.f);
        o.prefill_to_pool = to_pool;
        auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
        ASSERT_TRUE(w.ok()) << w.status();
        Driver drv(w->get());
        std::vector<SequenceId> ids = {drv.Open(Prompt(151, 31)), drv.Open(Prompt(126, 32))};
        for (int step = 0; step < 24; ++step) {
          std::vector<std::vector<uint16_t>> outs;
          auto stats = drv.Step(ids, {3 * step + 1, 5 * step + 2}, &outs);
          if (absl::IsResourceExhausted(stats.status())) break;  // below one layer's need
          ASSERT_TRUE(stats.ok()) << stats.status();
          ++steps;
          for (const absl::Status& s : stats->sequence_status) ASSERT_TRUE(s.ok()) << s;
          for (int l = 0; l < kLayers; ++l) {
            for (int b = 0; b < 2; ++b) {
              EXPECT_LT(drv.Error(ids[b], b, l, outs[l], /*dense=*/false), kTol)
                  << step << " " << b << " " << l;
            }
          }
        }
        evictions += (*w)->Stats().pool_evictions;
      }
    }
  }
  EXPECT_GT(steps, 24 * 24);  // most configurations ran every step
  EXPECT_GT(evictions, 0);
}

// A layer resolving thousands of head-pages (at least DecodeWorker's threshold of 4096) resolves
// each KV head's on its own select thread: louiskv rescoring every resident page, 6 sequences x 2
// heads x ~525 scored and 384 attended pages per layer. The result equals the one-thread
// worker's bit for bit, output and counters.
TEST(DecodeWorker, LargeLayersResolveHeadsOnTheSelectThreadsLikeOneThread) {
  std::vector<std::vector<std::vector<uint16_t>>> outs(2);
  std::vector<std::vector<WorkerStepStats>> stats(2);
  std::vector<std::vector<std::vector<std::vector<int64_t>>>> attended(2);
  for (int threads : {1, 4}) {
    const int t = threads == 1 ? 0 : 1;
    TempDir dir;
    auto store = OpenStore(dir.path());
    DecodeWorkerOptions o = Options(retriever::Policy::kBoundary, 384 * kPage, 4000);
    o.selector.boundary_threshold = 0.2f;
    o.select_threads = threads;
    auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
    ASSERT_TRUE(w.ok()) << w.status();
    Driver drv(w->get());
    std::vector<SequenceId> ids;
    for (int s = 0; s < 6; ++s) ids.push_back(drv.Open(Prompt(2101, 40 + s), nullptr, 512));
    ASSERT_TRUE((*w)->Flush().ok());
    for (int step = 0; step < 3; ++step) {
      std::vector<std::vector<uint16_t>> o_step;
      std::vector<int32_t> next;
      for (int s = 0; s < 6; ++s) next.push_back(6 * step + s);
      auto st = drv.Step(ids, next, &o_step);
      ASSERT_TRUE(st.ok()) << st.status();
      for (const absl::Status& x : st->sequence_status) ASSERT_TRUE(x.ok()) << x;
      for (int l = 0; l < kLayers; ++l) {
        outs[t].push_back(o_step[l]);
        for (size_t b = 0; b < ids.size(); ++b) {
          EXPECT_LT(drv.Error(ids[b], static_cast<int>(b), l, o_step[l], false), kTol);
          auto a = (*w)->AttendedPositions(ids[b], l);
          ASSERT_TRUE(a.ok());
          attended[t].push_back(*a);
        }
      }
      stats[t].push_back(*st);
    }
    EXPECT_GE(stats[t][0].attended_head_pages, kLayers * 4096);  // the attend path's too
  }
  EXPECT_EQ(outs[0], outs[1]);
  EXPECT_EQ(attended[0], attended[1]);
  for (size_t i = 0; i < stats[0].size(); ++i) {
    EXPECT_EQ(stats[0][i].fetched_head_pages, stats[1][i].fetched_head_pages);
    EXPECT_EQ(stats[0][i].attended_head_pages, stats[1][i].attended_head_pages);
    EXPECT_EQ(stats[0][i].pool_hits, stats[1][i].pool_hits);
    EXPECT_EQ(stats[0][i].retrievals, stats[1][i].retrievals);
  }
}

TEST(DecodeWorker, LouiskvAttendsWhatTheRetrieverSelects) {
  ExpectLouiskvAttendsWhatTheRetrieverSelects(1.5, /*trigger_late=*/false);
  ExpectLouiskvAttendsWhatTheRetrieverSelects(1.5, /*trigger_late=*/true);  // no late reads
}

TEST(DecodeWorker, LouiskvRescoringEveryResidentPageAttendsWhatTheRetrieverSelects) {
  ExpectLouiskvAttendsWhatTheRetrieverSelects(4.0, /*trigger_late=*/false);
}

TEST(DecodeWorker, LouiskvReadingQueriesAndKeysLateAttendsWhatTheRetrieverSelects) {
  ExpectLouiskvAttendsWhatTheRetrieverSelects(4.0, /*trigger_late=*/true);
}

// selector.retrieve_late: every step after a sequence's first reads q and k late, retrievals
// included (they take effect a step after the trigger fires), and still attends what on-time
// reference selectors with the same options select.
TEST(DecodeWorker, LouiskvRetrievingLateReadsEveryStepAfterTheFirstLate) {
  ExpectLouiskvAttendsWhatTheRetrieverSelects(4.0, /*trigger_late=*/true, /*retrieve_late=*/true);
}

// Prompts too short to cluster (nothing between the sink page and the window) have no layout
// pages: louiskv attends natural pages only, through the pages' fill and beyond.
TEST(DecodeWorker, LouiskvShortPromptsHaveNoLayoutPages) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(),
                                Options(retriever::Policy::kBoundary, 3 * kPage, 64));
  ASSERT_TRUE(w.ok()) << w.status();
  Driver drv(w->get());
  const std::vector<SequenceId> ids = {drv.Open(Prompt(1, 30)), drv.Open(Prompt(5, 31)),
                                       drv.Open(Prompt(9, 32))};
  for (SequenceId id : ids) {
    auto layout = (*w)->LayoutPageKeys(id, 0);
    ASSERT_TRUE(layout.ok());
    EXPECT_TRUE(layout->empty());
  }
  for (int step = 0; step < 14; ++step) {
    std::vector<std::vector<uint16_t>> outs;
    auto stats = drv.Step(ids, {step, step + 1, step + 2}, &outs);
    ASSERT_TRUE(stats.ok()) << stats.status();
    for (const absl::Status& s : stats->sequence_status) ASSERT_TRUE(s.ok()) << s;
    for (int l = 0; l < kLayers; ++l) {
      for (int b = 0; b < 3; ++b) {
        EXPECT_LT(drv.Error(ids[b], b, l, outs[l], /*dense=*/false), kTol) << step << " " << b;
      }
    }
  }
  EXPECT_EQ((*w)->Stats().layout_pages, 0);
  // Resident accounting: host selectors hold the open sequences' keys; closing frees them.
  const WorkerStats open = (*w)->Stats();
  EXPECT_GE(open.selector_host_bytes, int64_t{3} * kLayers * (1 + 5 + 9) * kKv * kDim * 2);
  EXPECT_GT(open.pool_bytes, 0);
  EXPECT_EQ(open.summary_table_bytes, 0);  // no device selection
  for (SequenceId id : ids) ASSERT_TRUE((*w)->Close(id).ok());
  EXPECT_EQ((*w)->Stats().selector_host_bytes, 0);
}

// A layout page whose stored bytes are damaged is never attended: the worker's checksum (taken
// from the bytes it assembled) catches the gather, the store's own checksum the re-read, so the
// sequence that needs it fails with DataLoss and the rest of the batch goes on.
// louiskv's rescored candidates sit in the pool with the attended pages: a step may need ceil(1.5
// x the budget) slots per (sequence, layer) (5 budget pages -> 8, + window + open page = 10, + 2
// open pages) where quest needs 7 (+ 2). A pool of 11 is refused for louiskv before anything
// changes, with a clear error, and serves quest; 12 serves louiskv.
// louiskv holds each (sequence, layer)'s resident candidates between retrievals, within what
// Plan's worst case leaves of the pool: a larger batch releases holds (outside the batch first,
// then its own), whose pages are then resolved again. Outputs stay right and no step fails.
class LouiskvReads : public ::testing::TestWithParam<bool> {};

// With trigger_late the steps after the first read q and k late; the first sequence is closed
// with its last step's reads still pending.
TEST_P(LouiskvReads, ReleasesHeldSlotsThePlanNeeds) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  DecodeWorkerOptions o = Options(retriever::Policy::kBoundary, 5 * kPage, 40);
  o.selector.boundary_threshold = -1.f;  // one retrieval, then closed-form steps only
  o.selector.trigger_late = GetParam();
  auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(w.ok()) << w.status();
  Driver drv(w->get());
  const std::vector<SequenceId> ids = {drv.Open(Prompt(61, 21)), drv.Open(Prompt(61, 22))};
  for (int step = 0; step < 12; ++step) {
    // Four steps of the first sequence, four of both (each needs 17 slots per head at worst,
    // with 4 open pages: 2 of 40 left to hold), four of the second.
    const std::vector<SequenceId> batch = step < 4
                                              ? std::vector<SequenceId>{ids[0]}
                                              : (step < 8 ? ids : std::vector<SequenceId>{ids[1]});
    std::vector<int32_t> next(batch.size(), 5 + step);
    std::vector<std::vector<uint16_t>> outs;
    auto stats = drv.Step(batch, next, &outs);
    ASSERT_TRUE(stats.ok()) << stats.status();
    for (const absl::Status& st : stats->sequence_status) ASSERT_TRUE(st.ok()) << st;
    // Every step after a sequence's first reads late (the first is its one retrieval).
    const int64_t firsts = step == 0 || step == 4 ? 1 : 0;
    EXPECT_EQ(stats->late_reads,
              GetParam() ? (static_cast<int64_t>(batch.size()) - firsts) * kLayers : 0);
    for (size_t b = 0; b < batch.size(); ++b) {
      for (int l = 0; l < kLayers; ++l) {
        EXPECT_LT(drv.Error(batch[b], static_cast<int>(b), l, outs[l], /*dense=*/false), kTol)
            << "step " << step;
      }
    }
    const int64_t held = (*w)->Stats().held_head_pages;
    if (step == 3 || step == 11) {
      EXPECT_GT(held, 4 * kKv) << "step " << step;  // one sequence's
    }
    if (step >= 4 && step < 8) {
      EXPECT_LE(held, 2 * kKv) << "step " << step;  // at most what both leave
    }
    if (step == 7) {
      ASSERT_TRUE((*w)->Close(ids[0]).ok());
    }
  }
  ASSERT_TRUE((*w)->Close(ids[1]).ok());
  EXPECT_EQ((*w)->Stats().held_head_pages, 0);  // closing releases what a sequence held
}

INSTANTIATE_TEST_SUITE_P(DecodeWorker, LouiskvReads, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? "Late" : "OnTime";
                         });

TEST(DecodeWorker, LouiskvPlansPoolRoomForItsRescoredCandidates) {
  for (int32_t slots : {11, 12}) {
    for (auto policy : {retriever::Policy::kQuest, retriever::Policy::kBoundary}) {
      SCOPED_TRACE(::testing::Message()
                   << "slots " << slots << " policy " << retriever::PolicyName(policy));
      TempDir dir;
      auto store = OpenStore(dir.path());
      DecodeWorkerOptions o = Options(policy, 5 * kPage, slots);
      o.selector.boundary_threshold = -0.1f;
      o.selector.rescore_factor = 1.5;
      auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
      ASSERT_TRUE(w.ok()) << w.status();
      Driver drv(w->get());
      const SequenceId id = drv.Open(Prompt(61, 8));
      const bool fits = slots >= 12 || policy == retriever::Policy::kQuest;
      for (int step = 0; step < 6; ++step) {
        auto stats = drv.Step({id}, {7 + step});
        if (!fits) {
          EXPECT_EQ(stats.status().code(), absl::StatusCode::kResourceExhausted);
          EXPECT_NE(stats.status().message().find("pool_slots_per_head"), std::string::npos);
          EXPECT_EQ(*(*w)->Length(id, 0), 61);  // nothing changed
          break;
        }
        ASSERT_TRUE(stats.ok()) << stats.status();
        for (const absl::Status& st : stats->sequence_status) EXPECT_TRUE(st.ok()) << st;
      }
    }
  }
}

TEST(DecodeWorker, ADamagedLayoutPageIsNeverAttended) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  const DecodeWorkerOptions o = Options(retriever::Policy::kBoundary, 5 * kPage, 96);
  const std::vector<int32_t> bad_prompt = Prompt(61, 4), good_prompt = Prompt(45, 5);
  {
    auto w1 = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
    ASSERT_TRUE(w1.ok()) << w1.status();
    Driver d1(w1->get());
    const SequenceId a = d1.Open(bad_prompt);
    ASSERT_TRUE((*w1)->Flush().ok());
    auto layout = (*w1)->LayoutPageKeys(a, 0);
    ASSERT_TRUE(layout.ok());
    ASSERT_EQ(layout->size(), 13u);
    EXPECT_TRUE((*w1)->LayoutPageKeys(a, 1).ok());
    EXPECT_TRUE(absl::IsNotFound((*w1)->LayoutPageKeys(a + 1, 0).status()));
    for (const PageKey& key : *layout) {  // one byte of every layout page of layer 0
      auto lease = store->AcquireRead(o.tenant, key);
      ASSERT_TRUE(lease.ok()) << lease.status();
      store->HostArenaInfo().base[lease->arena_offset + 5] ^= 0x20;
      ASSERT_TRUE(store->ReleaseRead(lease->lease_id).ok());
    }
  }
  // A fresh worker (nothing resident): the bad prompt's layout pages are found stored under
  // their keys and not written again, so its step reads the damaged bytes.
  auto w2 = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(w2.ok());
  Driver d2(w2->get());
  const SequenceId good = d2.Open(good_prompt), bad = d2.Open(bad_prompt);
  ASSERT_TRUE((*w2)->Flush().ok());
  std::vector<std::vector<uint16_t>> outs;
  auto stats = d2.Step({good, bad}, {1, 2}, &outs);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_TRUE(stats->sequence_status[0].ok()) << stats->sequence_status[0];
  EXPECT_EQ(stats->sequence_status[1].code(), absl::StatusCode::kDataLoss)
      << stats->sequence_status[1];
  EXPECT_GT(stats->verify_failures, 0);
  for (int d = 0; d < kQ * kDim; ++d) EXPECT_EQ(outs[0][kQ * kDim + d], 0) << d;  // zeroed
  for (int l = 0; l < kLayers; ++l) EXPECT_LT(d2.Error(good, 0, l, outs[l], false), kTol);
  EXPECT_TRUE(d2.Step({good}, {3}).ok());
}

TEST(DecodeWorker, AFullSummaryTableIsRefused) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  DecodeWorkerOptions o = Options(retriever::Policy::kQuest, 5 * kPage, 64);
  o.summary_slots = 20;  // a 61-token prompt needs 16 per layer
  auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(w.ok()) << w.status();
  const std::vector<int32_t> prompt = Prompt(61, 9);
  auto opened = (*w)->Open(prompt);
  ASSERT_TRUE(opened.ok());
  std::vector<absl::Status> got;
  for (int l = 0; l < kLayers; ++l) {
    std::vector<uint16_t> k = Rows(0, l, prompt, 0, 61), v = Rows(1, l, prompt, 0, 61);
    got.push_back((*w)->Prefill(opened->id, l,
                                TensorView::Contiguous(k.data(), DType::kFp16, {61, kKv, kDim}),
                                TensorView::Contiguous(v.data(), DType::kFp16, {61, kKv, kDim})));
  }
  EXPECT_TRUE(got[0].ok()) << got[0];
  EXPECT_TRUE(absl::IsResourceExhausted(got[1])) << got[1];
  // Closing the sequence gives its slots back: the same prompt fits again.
  ASSERT_TRUE((*w)->Close(opened->id).ok());
  Driver drv(w->get());
  const SequenceId again = drv.Open(Prompt(21, 10));
  EXPECT_TRUE(drv.Step({again}, {1}).ok());
  o.summary_slots = 0;
  EXPECT_TRUE(absl::IsInvalidArgument(
      DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o).status()));
}

// louiskv's closed-form steps with a streaming head per layer: the streaming head attends its
// sinks and window only, the other head the closed form's choice, with its resident candidates
// held (and named on the backend).
TEST(DecodeWorker, LouiskvClosedFormStepsKeepStreamingHeadsToTheirWindow) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  DecodeWorkerOptions o = Options(retriever::Policy::kBoundary, 5 * kPage, 96);
  o.selector.boundary_threshold = -1.f;  // one retrieval, then closed-form steps only
  o.layer_streaming_heads = {{1}, {0}};
  o.streaming_sink_pages = 1;
  o.streaming_window_pages = 1;
  auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(w.ok()) << w.status();
  Driver drv(w->get());
  const SequenceId s = drv.Open(Prompt(61, 31));
  int64_t chosen = 0, held = 0;
  for (int step = 0; step < 8; ++step) {
    std::vector<std::vector<uint16_t>> outs;
    auto stats = drv.Step({s}, {step}, &outs);
    ASSERT_TRUE(stats.ok()) << stats.status();
    for (const absl::Status& st : stats->sequence_status) ASSERT_TRUE(st.ok()) << st;
    chosen += stats->chosen_on_backend;
    const int32_t cur = static_cast<int32_t>((drv.tokens(s).size() - 1) / kPage);
    for (int l = 0; l < kLayers; ++l) {
      auto rows = (*w)->LastRows(s, l);
      ASSERT_TRUE(rows.ok()) << rows.status();
      const int streaming = l == 0 ? 1 : 0;
      EXPECT_EQ((*rows)[streaming], (std::vector<int32_t>{0, cur})) << "step " << step;
      EXPECT_EQ((*rows)[1 - streaming].back(), cur);
      EXPECT_LT(drv.Error(s, 0, l, outs[l], /*dense=*/false), kTol) << "step " << step;
    }
    // Held from the first closed-form step on (renewed when the window moves past resident
    // pages: here every page, the budget leaving a one-page window).
    held = (*w)->Stats().held_head_pages;
    if (step >= 1) {
      EXPECT_GT(held, 0) << "step " << step;
    }
  }
  EXPECT_EQ(chosen, 8 * kLayers);  // every step, retrievals included
}

TEST(DecodeWorker, StreamingHeadsAttendOnlySinksAndWindow) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  DecodeWorkerOptions o = Options(retriever::Policy::kQuest, 4096, 64);  // dense otherwise
  o.layer_streaming_heads = {{1}, {0}};
  o.streaming_sink_pages = 1;
  o.streaming_window_pages = 1;
  auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(w.ok()) << w.status();
  Driver drv(w->get());
  const SequenceId s = drv.Open(Prompt(37, 30));
  for (int step = 0; step < 6; ++step) {
    std::vector<std::vector<uint16_t>> outs;
    auto stats = drv.Step({s}, {step}, &outs);
    ASSERT_TRUE(stats.ok()) << stats.status();
    const int32_t cur = static_cast<int32_t>((drv.tokens(s).size() - 1) / kPage);
    for (int l = 0; l < kLayers; ++l) {
      auto rows = (*w)->LastRows(s, l);
      ASSERT_TRUE(rows.ok());
      const int streaming = l == 0 ? 1 : 0;
      EXPECT_EQ((*rows)[streaming], (std::vector<int32_t>{0, cur}));
      EXPECT_EQ(static_cast<int32_t>((*rows)[1 - streaming].size()), cur + 1);
      EXPECT_LT(drv.Error(s, 0, l, outs[l], /*dense=*/false), kTol);
    }
  }
  // A model profile (layers 0..3, heads streaming at (2, 1) and (3, 0)) for a worker serving
  // model layers 2 and 3 gives exactly the heads used above.
  std::vector<retriever::StreamingHeadInfo> heads;
  for (int l = 0; l < 4; ++l) {
    for (int h = 0; h < kKv; ++h) {
      heads.push_back({l, h, (l == 2 && h == 1) || (l == 3 && h == 0), 0.9f, 0.01f});
    }
  }
  auto profile = retriever::MakeStreamingProfile(4, kKv, kPage, kPage, heads);
  ASSERT_TRUE(profile.ok()) << profile.status();
  EXPECT_EQ(StreamingHeadsFromProfile(*profile, 2, kLayers),
            (std::vector<std::vector<int>>{{1}, {0}}));
  o.layer_streaming_heads = {{kKv}, {}};  // no such head
  EXPECT_EQ(DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(DecodeWorker, SharedPrefixIsFoundAndSharesSlots) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(),
                                Options(retriever::Policy::kQuest, 4096, 64));
  ASSERT_TRUE(w.ok());
  Driver drv(w->get());
  std::vector<int32_t> prompt = Prompt(22, 6);
  const SequenceId a = drv.Open(prompt);
  ASSERT_TRUE((*w)->Flush().ok());
  int64_t cached = -1;
  const SequenceId b = drv.Open(prompt, &cached);
  EXPECT_EQ(cached, 20);  // five full pages; the last token is always prefilled
  // Both decode the same two tokens: page 5 (tokens 20..23) is then the same page for both.
  for (int step = 0; step < 2; ++step) {
    std::vector<std::vector<uint16_t>> outs;
    auto stats = drv.Step({a, b}, {step + 1, step + 1}, &outs);
    ASSERT_TRUE(stats.ok()) << stats.status();
    // Both read the five shared pages of each layer and head from the same slots.
    EXPECT_EQ(stats->shared_head_pages, 5 * kKv * kLayers);
    for (int l = 0; l < kLayers; ++l) {
      EXPECT_LT(drv.Error(a, 0, l, outs[l], true), kTol);
      EXPECT_LT(drv.Error(b, 1, l, outs[l], true), kTol);
    }
  }
  ASSERT_TRUE((*w)->Flush().ok());
  // b's copy of page 5 found a's already stored (one page per layer), and the pool kept one slot.
  EXPECT_EQ((*w)->Stats().pages_reused, kLayers);
}

TEST(DecodeWorker, SecondWorkerReadsThePrefixAnotherWorkerWrote) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  auto w1 = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(),
                                 Options(retriever::Policy::kQuest, 3 * kPage, 64));
  auto w2 = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(),
                                 Options(retriever::Policy::kQuest, 3 * kPage, 64));
  ASSERT_TRUE(w1.ok() && w2.ok());
  Driver d1(w1->get()), d2(w2->get());
  std::vector<int32_t> prompt = Prompt(41, 7);
  d1.Open(prompt);
  ASSERT_TRUE((*w1)->Flush().ok());
  int64_t cached = -1;
  const SequenceId s = d2.Open(prompt, &cached);
  EXPECT_EQ(cached, 40);
  std::vector<std::vector<uint16_t>> outs;
  auto stats = d2.Step({s}, {9}, &outs);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_GT(stats->fetched_head_pages, 0);  // every page came from the store's host arena
  for (int l = 0; l < kLayers; ++l) EXPECT_LT(d2.Error(s, 0, l, outs[l], false), kTol);
}

TEST(DecodeWorker, PoolTooSmallForTheBatchIsRefusedAndChangesNothing) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  // 2 sequences x 2 layers of open pages + 2 x (3-page budget + window + 1) rows > 12 slots.
  auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(),
                                Options(retriever::Policy::kQuest, 3 * kPage, 12));
  ASSERT_TRUE(w.ok());
  Driver drv(w->get());
  const SequenceId a = drv.Open(Prompt(40, 8)), b = drv.Open(Prompt(40, 9));
  auto refused = drv.Step({a, b}, {1, 2});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(*(*w)->Length(a, 0), 40);
  EXPECT_EQ(*(*w)->Length(b, 1), 40);
  // One sequence at a time fits.
  ASSERT_TRUE((*w)->Close(b).ok());
  std::vector<std::vector<uint16_t>> outs;
  auto stats = drv.Step({a}, {3}, &outs);
  ASSERT_TRUE(stats.ok()) << stats.status();
}

// Shifts the source of the first head-page of each gather (a stale copy, as when a read lease ran
// out and the slot was reused), letting the gather's own verification find it.
class StaleFirstCopy final : public ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  const char* name() const override { return "stale"; }
  absl::Status Gather(absl::Span<const HeadFetch> f, absl::Span<uint8_t> bad) override {
    std::vector<HeadFetch> copy(f.begin(), f.end());
    if (!copy.empty() && armed) {
      copy[0].src_k += 64;
      ++stale;
    }
    return inner_->Gather(copy, bad);
  }
  bool armed = true;
  int stale = 0;
};

// Writes `prompt` through one worker, then steps it in a fresh one (every page gathered from the
// arena) whose backend serves the first head-page of each gather stale. The outputs must equal
// dense attention; returns the step's stats and how many stale copies were served.
std::pair<WorkerStepStats, int> StepOverStaleCopies(const std::vector<int32_t>& prompt,
                                                    const DecodeWorkerOptions& o, int chunk) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  auto w1 = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
  EXPECT_TRUE(w1.ok());
  Driver d1(w1->get());
  d1.Open(prompt, nullptr, chunk);
  EXPECT_TRUE((*w1)->Flush().ok());
  auto backend = std::make_unique<StaleFirstCopy>(MakeCpuWorkerBackend());
  StaleFirstCopy* stale = backend.get();
  auto w2 = DecodeWorker::Create(store.get(), std::move(backend), o);
  EXPECT_TRUE(w2.ok());
  Driver d2(w2->get());
  const SequenceId s = d2.Open(prompt);
  std::vector<std::vector<uint16_t>> outs;
  auto stats = d2.Step({s}, {5}, &outs);
  EXPECT_TRUE(stats.ok()) << stats.status();
  if (!stats.ok()) return {WorkerStepStats{}, stale->stale};
  EXPECT_TRUE(stats->sequence_status[0].ok()) << stats->sequence_status[0];
  for (int l = 0; l < kLayers; ++l) EXPECT_LT(d2.Error(s, 0, l, outs[l], true), kTol);
  return {*stats, stale->stale};
}

TEST(DecodeWorker, AStaleGatherIsCaughtAndReadAgainThroughTheStore) {
  auto [stats, stale] =
      StepOverStaleCopies(Prompt(30, 10), Options(retriever::Policy::kQuest, 4096, 64), 7);
  EXPECT_EQ(stale, kLayers);
  EXPECT_EQ(stats.verify_failures, kLayers);
  EXPECT_EQ(stats.fallback_reads, kLayers);
}

// A layer fetching more than one chunk (leased and gathered a chunk at a time, verdicts read once
// for all): a stale copy in every chunk, the last included, is caught and read again.
TEST(DecodeWorker, AStaleCopyInAnyChunkOfALargeFetchIsCaught) {
  auto [stats, stale] = StepOverStaleCopies(
      Prompt(2101, 21), Options(retriever::Policy::kQuest, 4096 * kPage, 1200), 512);
  // 525 closed pages x 2 heads per layer: chunks of 512, 512 and 26 head-pages.
  EXPECT_EQ(stats.fetched_head_pages, kLayers * 525 * kKv);
  EXPECT_EQ(stale, kLayers * 3);
  EXPECT_EQ(stats.verify_failures, stale);
  EXPECT_GE(stats.fallback_reads, kLayers * 2);  // a chunk's first head-page may share a page
}

// The worker reads pages it wrote where it reserved them, without leases. When the store moves
// such a page (demoted to SSD) and another page takes its host slot, the gather's checksum catches
// it: the page is leased (brought up from SSD, its hint renewed) and gathered again, and the
// output is right; moved pages whose slot was not reused still hold their bytes.
TEST(DecodeWorker, APageMovedFromUnderItsArenaHintIsCaughtAndReadWhereItIsNow) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  // Room for one sequence's closed pages per head: stepping a then b then a fetches a again.
  // Prefilled in whole pages (8-token chunks): every page reserved by the worker itself.
  const DecodeWorkerOptions o = Options(retriever::Policy::kQuest, 4096, 24);
  auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(w.ok()) << w.status();
  Driver d(w->get());
  const std::vector<int32_t> prompt_a = Prompt(62, 31), prompt_b = Prompt(62, 32);
  const SequenceId a = d.Open(prompt_a, nullptr, 8), b = d.Open(prompt_b, nullptr, 8);
  ASSERT_TRUE((*w)->Flush().ok());
  constexpr int64_t kClosed = 15;  // pages of 4 tokens before the open one (62 + 1 tokens)
  auto step = [&](SequenceId id, int32_t token) {
    std::vector<std::vector<uint16_t>> outs;
    auto stats = d.Step({id}, {token}, &outs);
    EXPECT_TRUE(stats.ok()) << stats.status();
    if (!stats.ok()) return WorkerStepStats{};
    EXPECT_TRUE(stats->sequence_status[0].ok()) << stats->sequence_status[0];
    for (int l = 0; l < kLayers; ++l) EXPECT_LT(d.Error(id, 0, l, outs[l], true), kTol) << l;
    return *stats;
  };
  WorkerStepStats first = step(a, 1);
  EXPECT_EQ(first.fetched_head_pages, kLayers * kClosed * kKv);
  EXPECT_EQ(first.unleased_head_pages, first.fetched_head_pages);  // all where it wrote them
  EXPECT_EQ(first.verify_failures + first.stale_hints, 0);
  step(b, 2);  // a's pages leave the pool

  // a's layer-0 pages go to SSD; new pages of the tenant then take free host slots.
  const std::vector<PageKey> keys =
      ChainPageKeys(absl::MakeConstSpan(prompt_a).subspan(0, kClosed * kPage), kPage,
                    PageKeyExtra{o.model_id, 0, o.salt});
  std::vector<uint64_t> old_at;
  for (const PageKey& k : keys) {
    auto lease = store->AcquireRead(o.tenant, k);
    ASSERT_TRUE(lease.ok()) << lease.status();
    old_at.push_back(lease->arena_offset);
    ASSERT_TRUE(store->ReleaseRead(lease->lease_id).ok());
  }
  auto moved = store->Demote(o.tenant, keys, Tier::kSsd);
  ASSERT_TRUE(moved.ok()) << moved.status();
  ASSERT_EQ(*moved, keys.size());
  int reused = 0;
  for (int i = 0; i < 64; ++i) {
    const PageKey k = ChainPageKey(PageKey{}, std::vector<int32_t>{i, 777}, PageKeyExtra{});
    std::vector<uint8_t> bytes(Layout().PageBytes(), static_cast<uint8_t>(i + 1));
    ASSERT_TRUE(store->Put(o.tenant, k, Layout(), bytes).ok());
    auto lease = store->AcquireRead(o.tenant, k);
    ASSERT_TRUE(lease.ok());
    reused += std::count(old_at.begin(), old_at.end(), lease->arena_offset);
    ASSERT_TRUE(store->ReleaseRead(lease->lease_id).ok());
  }
  ASSERT_GE(reused, 1);

  // Moved and overwritten: caught, then leased in one batch (up from SSD) and gathered again.
  WorkerStepStats caught = step(a, 3);
  EXPECT_EQ(caught.fetched_head_pages, kLayers * kClosed * kKv);
  EXPECT_EQ(caught.stale_hints, reused * kKv);
  EXPECT_EQ(caught.unleased_head_pages, caught.fetched_head_pages - reused * kKv);
  EXPECT_EQ(caught.verify_failures, 0);
  EXPECT_EQ(caught.fallback_reads, 0);
  EXPECT_EQ(caught.bytes_from_tier[static_cast<int>(Tier::kSsd)],
            static_cast<uint64_t>(reused) * Layout().PageBytes());
  step(b, 4);
  // The caught pages' hints were renewed by their leases; the page step 3 filled was committed
  // by a Put, which tells no offset: leased once.
  WorkerStepStats renewed = step(a, 5);
  EXPECT_EQ(renewed.fetched_head_pages, kLayers * (kClosed + 1) * kKv);
  EXPECT_EQ(renewed.verify_failures + renewed.stale_hints, 0);
  EXPECT_EQ(renewed.unleased_head_pages, renewed.fetched_head_pages - kLayers * kKv);
  step(b, 6);
  WorkerStepStats again = step(a, 7);
  EXPECT_EQ(again.verify_failures + again.stale_hints, 0);
  EXPECT_EQ(again.unleased_head_pages, again.fetched_head_pages);
}

// prefill_to_pool: prefill copies whole pages into free pool slots, never evicting, and a step
// that selects them finds them resident (nothing gathered); without it they are gathered back.
TEST(DecodeWorker, PrefillToPoolFillsFreeSlotsOnlyAndStepsFindThemResident) {
  for (const bool to_pool : {true, false}) {
    SCOPED_TRACE(to_pool ? "prefill_to_pool" : "decode reads only");
    TempDir dir;
    auto store = OpenStore(dir.path());
    DecodeWorkerOptions o = Options(retriever::Policy::kQuest, 4096, 80);
    o.prefill_to_pool = to_pool;
    auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
    ASSERT_TRUE(w.ok()) << w.status();
    Driver d(w->get());
    // a: 15 closed pages + an open one per layer (32 slots per head); b and c: 16 closed pages
    // per layer each, of which only 16 in all fit the 80 slots.
    const SequenceId a = d.Open(Prompt(62, 41), nullptr, 8);
    d.Open(Prompt(64, 42), nullptr, 8);
    d.Open(Prompt(64, 43), nullptr, 8);
    ASSERT_TRUE((*w)->Flush().ok());
    const WorkerStats before = (*w)->Stats();
    EXPECT_EQ(before.pool_evictions, 0);
    EXPECT_EQ(before.pool_used, to_pool ? 80 * kKv : kLayers * kKv);  // else: a's open pages
    std::vector<std::vector<uint16_t>> outs;
    auto stats = d.Step({a}, {1}, &outs);
    ASSERT_TRUE(stats.ok()) << stats.status();
    ASSERT_TRUE(stats->sequence_status[0].ok());
    EXPECT_EQ(stats->fetched_head_pages, to_pool ? 0 : kLayers * 15 * kKv);
    for (int l = 0; l < kLayers; ++l) EXPECT_LT(d.Error(a, 0, l, outs[l], true), kTol) << l;
  }
}

// The slots prefill put pages in are remembered as the rows' hints (LayerState::seen); once other
// sequences' steps evict those pages, the hints are stale: the next step of their sequence fetches
// them again and attends exactly what dense attention would.
TEST(DecodeWorker, HintsLeftStaleByEvictionsAreFetchedAgain) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  DecodeWorkerOptions o = Options(retriever::Policy::kQuest, 4096, 80);
  o.prefill_to_pool = true;
  auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(w.ok()) << w.status();
  Driver d(w->get());
  const SequenceId a = d.Open(Prompt(62, 41), nullptr, 8);
  const SequenceId b = d.Open(Prompt(64, 42), nullptr, 8);
  const SequenceId c = d.Open(Prompt(64, 43), nullptr, 8);
  ASSERT_TRUE((*w)->Flush().ok());
  ASSERT_EQ((*w)->Stats().pool_evictions, 0);
  for (int step = 0; step < 3; ++step) {  // b and c attend every page: a's are evicted
    auto stats = d.Step({b, c}, {step, step + 1});
    ASSERT_TRUE(stats.ok()) << stats.status();
    for (const absl::Status& s : stats->sequence_status) ASSERT_TRUE(s.ok()) << s;
  }
  EXPECT_GT((*w)->Stats().pool_evictions, 0);
  std::vector<std::vector<uint16_t>> outs;
  auto stats = d.Step({a}, {1}, &outs);
  ASSERT_TRUE(stats.ok()) << stats.status();
  ASSERT_TRUE(stats->sequence_status[0].ok()) << stats->sequence_status[0];
  EXPECT_GT(stats->fetched_head_pages, 0);
  EXPECT_EQ(stats->verify_failures, 0);
  for (int l = 0; l < kLayers; ++l) EXPECT_LT(d.Error(a, 0, l, outs[l], true), kTol) << l;
}

// Verification off (to measure what it costs) reads nothing without a lease: a hint is only as
// safe as the checksum that checks it.
TEST(DecodeWorker, WithoutVerificationEveryPageIsLeased) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  DecodeWorkerOptions o = Options(retriever::Policy::kQuest, 4096, 64);
  o.verify = false;
  auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(w.ok()) << w.status();
  Driver d(w->get());
  const SequenceId a = d.Open(Prompt(30, 33));
  ASSERT_TRUE((*w)->Flush().ok());
  auto stats = d.Step({a}, {1});
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_GT(stats->fetched_head_pages, 0);
  EXPECT_EQ(stats->unleased_head_pages, 0);
}

// One fetch that mixes reads: the first sequence's pages were written by this worker (read
// unleased, under a hold of the arena), the second's by another worker (leased, before the hold:
// no store call runs while it is held). Both exact.
TEST(DecodeWorker, LeasedAndUnleasedPagesInOneFetchAreBothServed) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  const DecodeWorkerOptions o = Options(retriever::Policy::kQuest, 4096 * kPage, 2400);
  const std::vector<int32_t> pa = Prompt(2101, 23), pb = Prompt(2101, 24);
  {
    auto other = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
    ASSERT_TRUE(other.ok()) << other.status();
    Driver d0(other->get());
    d0.Open(pb, nullptr, 512);
    ASSERT_TRUE((*other)->Flush().ok());
  }
  auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(w.ok()) << w.status();
  Driver d(w->get());
  const SequenceId a = d.Open(pa, nullptr, 512), b = d.Open(pb);
  ASSERT_TRUE((*w)->Flush().ok());
  std::vector<std::vector<uint16_t>> outs;
  auto stats = d.Step({a, b}, {5, 6}, &outs);
  ASSERT_TRUE(stats.ok()) << stats.status();
  for (const absl::Status& st : stats->sequence_status) EXPECT_TRUE(st.ok()) << st;
  EXPECT_EQ(stats->fetched_head_pages, kLayers * 2 * 525 * kKv);
  EXPECT_EQ(stats->unleased_head_pages, kLayers * 525 * kKv);
  EXPECT_EQ(stats->verify_failures + stats->stale_hints, 0);
  for (int l = 0; l < kLayers; ++l) {
    EXPECT_LT(d.Error(a, 0, l, outs[l], true), kTol) << l;
    EXPECT_LT(d.Error(b, 1, l, outs[l], true), kTol) << l;
  }
}

TEST(DecodeWorker, ACorruptStoredPageIsNeverAttended) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  const DecodeWorkerOptions o = Options(retriever::Policy::kQuest, 4096, 64);
  auto w1 = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(w1.ok());
  Driver d1(w1->get());
  const std::vector<int32_t> bad_prompt = Prompt(13, 11), good_prompt = Prompt(13, 12);
  d1.Open(bad_prompt);
  d1.Open(good_prompt);
  ASSERT_TRUE((*w1)->Flush().ok());
  // Flip one byte of page 1 of layer 0 of the first prompt, in the store's host arena.
  const PageKeyExtra extra{o.model_id, 0, o.salt};
  const std::vector<PageKey> keys = ChainPageKeys(bad_prompt, kPage, extra);
  auto lease = store->AcquireRead(o.tenant, keys[1]);
  ASSERT_TRUE(lease.ok()) << lease.status();
  store->HostArenaInfo().base[lease->arena_offset + 3] ^= 0x40;
  ASSERT_TRUE(store->ReleaseRead(lease->lease_id).ok());

  auto w2 = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(w2.ok());
  Driver d2(w2->get());
  // Open reads the cached prefix through the store, which finds the corruption and drops the
  // page: the bad sequence gets a shorter cached prefix and prefills the rest itself.
  int64_t cached_bad = -1;
  const SequenceId bad = d2.Open(bad_prompt, &cached_bad);
  EXPECT_EQ(cached_bad, 4);
  const SequenceId good = d2.Open(good_prompt);
  std::vector<std::vector<uint16_t>> outs;
  auto stats = d2.Step({bad, good}, {1, 2}, &outs);
  ASSERT_TRUE(stats.ok()) << stats.status();
  ASSERT_TRUE(stats->sequence_status[0].ok());
  for (int l = 0; l < kLayers; ++l) {
    EXPECT_LT(d2.Error(bad, 0, l, outs[l], true), kTol);
    EXPECT_LT(d2.Error(good, 1, l, outs[l], true), kTol);
  }

  // Now corrupt a page after the worker took its checksum: the gather flags it, the store read
  // fails its own checksum, so the sequence fails with DataLoss and its output is zero.
  auto w3 = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(w3.ok());
  Driver d3(w3->get());
  const SequenceId g3 = d3.Open(good_prompt), b3 = d3.Open(bad_prompt);
  const std::vector<PageKey> gkeys = ChainPageKeys(good_prompt, kPage, extra);
  auto glease = store->AcquireRead(o.tenant, gkeys[2]);
  ASSERT_TRUE(glease.ok());
  store->HostArenaInfo().base[glease->arena_offset + 100] ^= 0x01;
  ASSERT_TRUE(store->ReleaseRead(glease->lease_id).ok());
  outs.clear();
  auto s3 = d3.Step({g3, b3}, {3, 4}, &outs);
  ASSERT_TRUE(s3.ok()) << s3.status();
  EXPECT_EQ(s3->sequence_status[0].code(), absl::StatusCode::kDataLoss) << s3->sequence_status[0];
  EXPECT_TRUE(s3->sequence_status[1].ok());
  for (int d = 0; d < kQ * kDim; ++d) EXPECT_EQ(outs[0][d], 0) << d;  // never wrong bytes
  EXPECT_LT(d3.Error(b3, 1, 0, outs[0], true), kTol);
  // The failed sequence is refused from now on; the other one goes on.
  EXPECT_EQ((*w3)->Plan({g3}, {5}).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(d3.Step({b3}, {6}).ok());
  EXPECT_TRUE((*w3)->Close(g3).ok());
}

// A large layer (3 rows x 2 heads x 701 pages, resolved on the select threads) fetched whole, one
// page corrupted after the worker took its checksum: every other page arrives verified, the
// corrupt one fails only its sequence (DataLoss, zero output), the others equal dense attention.
TEST(DecodeWorker, ACorruptPageInALargeFetchFailsOnlyItsSequence) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  const DecodeWorkerOptions o = Options(retriever::Policy::kQuest, 4096 * kPage, 2400);
  const std::vector<std::vector<int32_t>> prompts = {Prompt(2801, 31), Prompt(2801, 32),
                                                     Prompt(2801, 33)};
  {
    auto w1 = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
    ASSERT_TRUE(w1.ok());
    Driver d1(w1->get());
    for (const auto& p : prompts) d1.Open(p);
    ASSERT_TRUE((*w1)->Flush().ok());
  }
  auto w2 = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(w2.ok());
  Driver d2(w2->get());
  std::vector<SequenceId> ids;
  for (const auto& p : prompts) ids.push_back(d2.Open(p));
  // After the worker took the checksums: one byte of page 600 of layer 0 of the third prompt.
  const PageKeyExtra extra{o.model_id, 0, o.salt};
  auto lease = store->AcquireRead(o.tenant, ChainPageKeys(prompts[2], kPage, extra)[600]);
  ASSERT_TRUE(lease.ok()) << lease.status();
  store->HostArenaInfo().base[lease->arena_offset + 5] ^= 0x10;
  ASSERT_TRUE(store->ReleaseRead(lease->lease_id).ok());
  std::vector<std::vector<uint16_t>> outs;
  auto stats = d2.Step(ids, {7, 8, 9}, &outs);
  ASSERT_TRUE(stats.ok()) << stats.status();
  // Every closed page of every row, per head: 3 rows at layer 0, 2 at layer 1 (the third row's
  // step ended at layer 0).
  EXPECT_EQ(stats->fetched_head_pages, int64_t{700} * kKv * (3 + 2));
  EXPECT_EQ(stats->verify_failures, 1);
  EXPECT_TRUE(stats->sequence_status[0].ok()) << stats->sequence_status[0];
  EXPECT_TRUE(stats->sequence_status[1].ok()) << stats->sequence_status[1];
  EXPECT_EQ(stats->sequence_status[2].code(), absl::StatusCode::kDataLoss);
  for (int l = 0; l < kLayers; ++l) {
    for (int b = 0; b < 2; ++b) EXPECT_LT(d2.Error(ids[b], b, l, outs[l], true), kTol) << l;
  }
  for (int d = 0; d < kQ * kDim; ++d) EXPECT_EQ(outs[0][2 * kQ * kDim + d], 0) << d;
}

TEST(DecodeWorker, CloseMidBatchAndForkThenDiverge) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(),
                                Options(retriever::Policy::kQuest, 4096, 64));
  ASSERT_TRUE(w.ok());
  Driver drv(w->get());
  const SequenceId a = drv.Open(Prompt(10, 13)), b = drv.Open(Prompt(11, 14)),
                   c = drv.Open(Prompt(6, 15));
  ASSERT_TRUE(drv.Step({a, b, c}, {1, 2, 3}).ok());
  ASSERT_TRUE((*w)->Close(b).ok());
  EXPECT_EQ((*w)->Close(b).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*w)->Plan({a, b}, {1, 2}).status().code(), absl::StatusCode::kInvalidArgument);
  auto child = (*w)->Fork(a);
  ASSERT_TRUE(child.ok()) << child.status();
  drv.Forked(a, *child);
  for (int step = 0; step < 6; ++step) {
    std::vector<std::vector<uint16_t>> outs;
    auto stats = drv.Step({a, c, *child}, {40 + step, 50 + step, 60 + step}, &outs);
    ASSERT_TRUE(stats.ok()) << stats.status();
    if (step == 0) {
      EXPECT_GT(stats->shared_head_pages, 0);  // the fork reads a's full pages
    }
    for (int l = 0; l < kLayers; ++l) {
      EXPECT_LT(drv.Error(a, 0, l, outs[l], true), kTol);
      EXPECT_LT(drv.Error(c, 1, l, outs[l], true), kTol);
      EXPECT_LT(drv.Error(*child, 2, l, outs[l], true), kTol);
    }
  }
}

// Quest on the backend with the boundary trigger keeps each batch's queries for the next step's
// trigger: a sequence closed in between, or forked, must neither break nor confuse that.
TEST(DecodeWorker, LaggedTriggerSurvivesCloseAndFork) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  DecodeWorkerOptions o = Options(retriever::Policy::kQuest, 3 * kPage, 64);
  o.boundary_trigger = true;
  o.boundary_threshold = 0.5f;
  auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(w.ok()) << w.status();
  Driver drv(w->get());
  const SequenceId a = drv.Open(Prompt(30, 13)), b = drv.Open(Prompt(33, 14)),
                   c = drv.Open(Prompt(26, 15));
  auto first = drv.Step({a, b, c}, {1, 2, 3});
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->retrievals, 3 * kLayers) << "every sequence retrieves at its first step";
  ASSERT_TRUE((*w)->Close(b).ok());
  auto child = (*w)->Fork(a);
  ASSERT_TRUE(child.ok()) << child.status();
  drv.Forked(a, *child);
  int64_t retrievals = 0;
  for (int step = 0; step < 8; ++step) {
    std::vector<std::vector<uint16_t>> outs;
    // The batch order changes between steps: the trigger follows sequences, not batch rows.
    const std::vector<SequenceId> batch =
        step % 2 == 0 ? std::vector<SequenceId>{c, *child, a} : std::vector<SequenceId>{a, c};
    std::vector<int32_t> next;
    for (size_t i = 0; i < batch.size(); ++i) next.push_back(40 + step + static_cast<int>(i));
    auto stats = drv.Step(batch, next, &outs);
    ASSERT_TRUE(stats.ok()) << stats.status();
    for (const absl::Status& st : stats->sequence_status) ASSERT_TRUE(st.ok()) << st;
    retrievals += stats->retrievals;
    for (int l = 0; l < kLayers; ++l) {
      for (size_t i = 0; i < batch.size(); ++i) {
        EXPECT_LT(drv.Error(batch[i], static_cast<int>(i), l, outs[l], false), kTol);
      }
    }
  }
  // The forked child retrieves at its first step; the others only when their trigger fired.
  EXPECT_GE(retrievals, kLayers);
}

// Quest with the boundary trigger at `threshold` (-1: never fires) and capturable steps.
DecodeWorkerOptions CapturableQuest(int32_t pool_slots, float threshold) {
  DecodeWorkerOptions o = Options(retriever::Policy::kQuest, 3 * kPage, pool_slots);
  o.capturable_steps = true;
  o.boundary_trigger = true;
  o.boundary_threshold = threshold;
  return o;
}

// Quest between retrievals: Plan stages the whole step and Attend only enqueues, so an engine
// can capture the layer loop in a CUDA graph and replay it. A worker driven that way (captures
// and replays emulated on the CPU: ReplayBackend) must give the same outputs, bit for bit, as one
// driven with Attend at every step — through page fills, batch changes and retrievals in between
// — and those outputs are attention over the pages it says it attended.
TEST(DecodeWorker, CapturedStepsReplayLikeAttendedOnes) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  // random queries: some steps retrieve, most do not
  const DecodeWorkerOptions o = CapturableQuest(256, -0.3f);
  auto eager = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(eager.ok()) << eager.status();
  auto graphs = std::make_unique<ReplayBackend>(MakeCpuWorkerBackend());
  ReplayBackend* replay = graphs.get();
  auto graphed = DecodeWorker::Create(store.get(), std::move(graphs), o);
  ASSERT_TRUE(graphed.ok()) << graphed.status();
  Driver de(eager->get()), dg(graphed->get());
  dg.UseGraphs(replay);
  std::vector<SequenceId> se, sg;
  for (int i = 0; i < 3; ++i) {
    se.push_back(de.Open(Prompt(29 + 3 * i, 70 + i)));
    sg.push_back(dg.Open(Prompt(29 + 3 * i, 70 + i)));
  }
  int capturable = 0;
  for (int step = 0; step < 40; ++step) {
    // Two sequences for a while, then all three: the graph is captured again.
    const size_t n = step < 20 ? 2 : 3;
    std::vector<SequenceId> be(se.begin(), se.begin() + n), bg(sg.begin(), sg.begin() + n);
    std::vector<int32_t> next;
    for (size_t i = 0; i < n; ++i) next.push_back(500 + 7 * step + static_cast<int>(i));
    std::vector<std::vector<uint16_t>> oe, og;
    auto a = de.Step(be, next, &oe);
    auto b = dg.Step(bg, next, &og);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(a->retrievals, b->retrievals) << "step " << step;
    capturable += a->retrievals == 0 ? 1 : 0;
    for (int l = 0; l < kLayers; ++l) {
      ASSERT_EQ(oe[l], og[l]) << "step " << step << " layer " << l;
      for (size_t i = 0; i < n; ++i) {
        EXPECT_LT(de.Error(be[i], static_cast<int>(i), l, oe[l], false), kTol);
        for (const absl::Status& st : b->sequence_status) ASSERT_TRUE(st.ok()) << st;
      }
    }
  }
  EXPECT_GE(capturable, 8);
  EXPECT_GE(dg.captures(), 2) << "a new batch size is a new graph";
  EXPECT_GE(dg.replays(), 4);
  EXPECT_EQ(dg.captures() + dg.replays(), capturable);
}

// An engine's k and v are often slices of one fused QKV projection (tokens further apart than
// their heads): a capturable step writes them from there as it does from contiguous tensors.
TEST(DecodeWorker, StagedStepsTakeKAndVSlicedFromAFusedProjection) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  // never fires: every step after the first is capturable
  const DecodeWorkerOptions o = CapturableQuest(128, -1.0f);
  auto wa = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
  auto wb = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(wa.ok() && wb.ok());
  Driver da(wa->get()), db(wb->get());
  const std::vector<SequenceId> a = {da.Open(Prompt(41, 91)), da.Open(Prompt(35, 92))};
  const std::vector<SequenceId> b = {db.Open(Prompt(41, 91)), db.Open(Prompt(35, 92))};
  const int64_t B = 2, W = kQ + 2 * kKv;  // fused rows: q heads, then k, then v
  int capturable = 0;
  for (int step = 0; step < 6; ++step) {
    auto pa = (*wa)->Plan(a, {step, step + 1});
    auto pb = (*wb)->Plan(b, {step, step + 1});
    ASSERT_TRUE(pa.ok() && pb.ok());
    ASSERT_EQ(pa->capturable, pb->capturable);
    capturable += pb->capturable ? 1 : 0;
    for (int l = 0; l < kLayers; ++l) {
      std::vector<uint16_t> fused(B * W * kDim), q, k, v, oa(B * kQ * kDim), ob(oa.size());
      for (size_t i = 0; i < fused.size(); ++i) {
        fused[i] = Half(Value(700 + l, step, i, 3));
      }
      for (int64_t r = 0; r < B; ++r) {
        const uint16_t* row = fused.data() + r * W * kDim;
        q.insert(q.end(), row, row + kQ * kDim);
        k.insert(k.end(), row + kQ * kDim, row + (kQ + kKv) * kDim);
        v.insert(v.end(), row + (kQ + kKv) * kDim, row + W * kDim);
      }
      auto slice = [&](int first, int heads) {
        TensorView t =
            TensorView::Contiguous(fused.data() + first * kDim, DType::kFp16, {B, heads, kDim});
        t.strides[0] = W * kDim;
        return t;
      };
      ASSERT_TRUE((*wa)
                      ->Attend(*pa, l,
                               TensorView::Contiguous(q.data(), DType::kFp16, {B, kQ, kDim}),
                               TensorView::Contiguous(k.data(), DType::kFp16, {B, kKv, kDim}),
                               TensorView::Contiguous(v.data(), DType::kFp16, {B, kKv, kDim}),
                               TensorView::Contiguous(oa.data(), DType::kFp16, {B, kQ, kDim}))
                      .ok());
      ASSERT_TRUE((*wb)
                      ->Attend(*pb, l, slice(0, kQ), slice(kQ, kKv), slice(kQ + kKv, kKv),
                               TensorView::Contiguous(ob.data(), DType::kFp16, {B, kQ, kDim}))
                      .ok());
      ASSERT_EQ(oa, ob) << "step " << step << " layer " << l;
    }
    ASSERT_TRUE((*wa)->Finish(*pa).ok());
    ASSERT_TRUE((*wb)->Finish(*pb).ok());
  }
  EXPECT_EQ(capturable, 5);
}

// Replayed is for a capturable step none of whose layers ran; a capturable step's Attend refuses
// bad input like any step's, changing nothing, and then takes good input.
TEST(DecodeWorker, ReplayedAndStagedAttendRefuseMisuse) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  // never fires: every step after the first is capturable
  const DecodeWorkerOptions o = CapturableQuest(128, -1.0f);
  auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(w.ok()) << w.status();
  Driver drv(w->get());
  const SequenceId a = drv.Open(Prompt(37, 81));
  auto first = (*w)->Plan({a}, {9});
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(first->capturable) << "the first step retrieves";
  EXPECT_EQ((*w)->Replayed(*first).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE((*w)->Close(a).ok() == false);  // inside a step
  std::vector<uint16_t> q(kQ * kDim, Half(0.25f)), k(kKv * kDim, Half(0.5f)),
      v(kKv * kDim, Half(-0.5f)), out(kQ * kDim);
  auto Q1 = TensorView::Contiguous(q.data(), DType::kFp16, {1, kQ, kDim});
  auto K1 = TensorView::Contiguous(k.data(), DType::kFp16, {1, kKv, kDim});
  auto V1 = TensorView::Contiguous(v.data(), DType::kFp16, {1, kKv, kDim});
  auto O1 = TensorView::Contiguous(out.data(), DType::kFp16, {1, kQ, kDim});
  for (int l = 0; l < kLayers; ++l) ASSERT_TRUE((*w)->Attend(*first, l, Q1, K1, V1, O1).ok());
  ASSERT_TRUE((*w)->Finish(*first).ok());

  auto plan = (*w)->Plan({a}, {10});
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_TRUE(plan->capturable);
  StepPlan other = *plan;
  other.id += 1;
  EXPECT_EQ((*w)->Replayed(other).code(), absl::StatusCode::kInvalidArgument);
  auto K2 = TensorView::Contiguous(k.data(), DType::kFp16, {1, kQ, kDim / 2});
  EXPECT_EQ((*w)->Attend(*plan, 0, Q1, K2, V1, O1).code(), absl::StatusCode::kInvalidArgument);
  std::vector<uint16_t> bad = k;
  bad[3] = 0x7e00;  // NaN
  auto KBad = TensorView::Contiguous(bad.data(), DType::kFp16, {1, kKv, kDim});
  EXPECT_EQ((*w)->Attend(*plan, 0, Q1, KBad, V1, O1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*w)->Attend(*plan, kLayers, Q1, K1, V1, O1).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE((*w)->Attend(*plan, 0, Q1, K1, V1, O1).ok());
  EXPECT_EQ((*w)->Replayed(*plan).code(), absl::StatusCode::kFailedPrecondition)
      << "a layer of it was attended";
  EXPECT_EQ((*w)->Finish(*plan).status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE((*w)->Attend(*plan, 1, Q1, K1, V1, O1).ok());
  auto stats = (*w)->Finish(*plan);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->retrievals, 0);
  ASSERT_EQ(*(*w)->Length(a, 0), 39);
  ASSERT_EQ(*(*w)->Length(a, 1), 39);
}

TEST(DecodeWorker, BadInputIsRefusedAndChangesNothing) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(),
                                Options(retriever::Policy::kQuest, 4096, 64));
  ASSERT_TRUE(w.ok());
  DecodeWorker& wk = **w;
  Driver drv(&wk);
  const SequenceId a = drv.Open(Prompt(9, 16));
  std::vector<uint16_t> q(kQ * kDim, Half(0.1f)), k(kKv * kDim, Half(0.2f)),
      v(kKv * kDim, Half(0.3f)), o(kQ * kDim, 0);
  auto Q1 = [&](DType dt = DType::kFp16) {
    return TensorView::Contiguous(q.data(), dt, {1, kQ, kDim});
  };
  auto K1 = TensorView::Contiguous(k.data(), DType::kFp16, {1, kKv, kDim});
  auto V1 = TensorView::Contiguous(v.data(), DType::kFp16, {1, kKv, kDim});
  auto O1 = TensorView::Contiguous(o.data(), DType::kFp16, {1, kQ, kDim});

  // Options and Open / Prefill.
  DecodeWorkerOptions bad = Options(retriever::Policy::kQuest, 4096, 64);
  bad.q_heads = 3;
  EXPECT_EQ(DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  // louiskv's rows address its cluster-ordered layout: natural pinned or sink pages past its own
  // sinks cannot be expressed there.
  bad = Options(retriever::Policy::kBoundary, 4096, 64);
  bad.pin_prompt = true;
  EXPECT_EQ(DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  bad = Options(retriever::Policy::kBoundary, 4096, 64);
  bad.layer_streaming_heads = {{1}, {}};
  bad.streaming_sink_pages = 2;
  EXPECT_EQ(DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  bad.streaming_sink_pages = 1;
  EXPECT_TRUE(DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), bad).ok());
  bad = Options(retriever::Policy::kBoundary, 4096, 64);
  bad.select_threads = -1;
  EXPECT_EQ(DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  bad = Options(retriever::Policy::kQuest, 4096, 64);
  bad.prepare_host_bytes = -2;
  EXPECT_EQ(DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(wk.Open({}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(wk.Prefill(a, 0, K1, V1).code(), absl::StatusCode::kInvalidArgument);  // no tokens left
  EXPECT_EQ(wk.Prefill(999, 0, K1, V1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(wk.Fork(999).status().code(), absl::StatusCode::kInvalidArgument);

  // Plans.
  EXPECT_EQ(wk.Plan({999}, {1}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(wk.Plan({a, a}, {1, 1}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(wk.Plan({a}, {1, 2}).status().code(), absl::StatusCode::kInvalidArgument);
  auto opened = wk.Open(Prompt(5, 17));  // not prefilled
  ASSERT_TRUE(opened.ok());
  EXPECT_EQ(wk.Plan({opened->id}, {1}).status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(wk.Close(opened->id).ok());

  auto plan = wk.Plan({a}, {77});
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(wk.Plan({a}, {1}).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(wk.Close(a).code(), absl::StatusCode::kFailedPrecondition);
  StepPlan other = *plan;
  other.id += 1;
  const auto code = [](absl::Status s) { return s.code(); };
  EXPECT_EQ(code(wk.Attend(other, 0, Q1(), K1, V1, O1)), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(wk.Attend(*plan, kLayers, Q1(), K1, V1, O1)), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(wk.Attend(*plan, -1, Q1(), K1, V1, O1)), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(wk.Attend(*plan, 0, Q1(DType::kBf16), K1, V1, O1)),
            absl::StatusCode::kInvalidArgument);
  auto q2 = TensorView::Contiguous(q.data(), DType::kFp16, {1, kQ / 2, 2 * kDim});
  EXPECT_EQ(code(wk.Attend(*plan, 0, q2, K1, V1, O1)), absl::StatusCode::kInvalidArgument);
  auto batch2 = TensorView::Contiguous(q.data(), DType::kFp16, {2, kQ / 2, kDim});
  EXPECT_EQ(code(wk.Attend(*plan, 0, batch2, K1, V1, O1)), absl::StatusCode::kInvalidArgument);
  TensorView strided = Q1();
  strided.strides[2] = 2;
  EXPECT_EQ(code(wk.Attend(*plan, 0, strided, K1, V1, O1)), absl::StatusCode::kInvalidArgument);
  TensorView on_gpu = Q1();
  on_gpu.device = Device::kCuda;
  EXPECT_EQ(code(wk.Attend(*plan, 0, on_gpu, K1, V1, O1)), absl::StatusCode::kInvalidArgument);
  q[5] = 0x7c00;  // inf
  EXPECT_EQ(code(wk.Attend(*plan, 0, Q1(), K1, V1, O1)), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(wk.Finish(*plan).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(*wk.Length(a, 0), 9);  // nothing was appended by the refused calls

  // The same plan still runs afterwards, with real inputs for every layer.
  auto toks = drv.tokens(a);
  toks.push_back(77);
  for (int l = 0; l < kLayers; ++l) {
    std::vector<uint16_t> ql, kl = Rows(0, l, toks, 9, 1), vl = Rows(1, l, toks, 9, 1);
    for (int h = 0; h < kQ; ++h) {
      for (int d = 0; d < kDim; ++d) ql.push_back(Q(l, 9, 77, h, d));
    }
    std::vector<uint16_t> ol(kQ * kDim);
    ASSERT_TRUE(wk.Attend(*plan, l, TensorView::Contiguous(ql.data(), DType::kFp16, {1, kQ, kDim}),
                          TensorView::Contiguous(kl.data(), DType::kFp16, {1, kKv, kDim}),
                          TensorView::Contiguous(vl.data(), DType::kFp16, {1, kKv, kDim}),
                          TensorView::Contiguous(ol.data(), DType::kFp16, {1, kQ, kDim}))
                    .ok());
    EXPECT_EQ(code(wk.Attend(*plan, l, Q1(), K1, V1, O1)), absl::StatusCode::kFailedPrecondition);
  }
  ASSERT_TRUE(wk.Finish(*plan).ok());
  EXPECT_EQ(*wk.Length(a, 1), 10);
}

TEST(DecodeWorker, TwoWorkersOnThreadsShareOneStore) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  std::vector<double> errors(2, 1.0);
  auto run = [&](int i) {
    auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(),
                                  Options(retriever::Policy::kQuest, 6 * kPage, 64));
    ASSERT_TRUE(w.ok());
    Driver drv(w->get());
    const SequenceId a = drv.Open(Prompt(33, 18)), b = drv.Open(Prompt(29, 19 + i));
    double err = 0;
    for (int step = 0; step < 12; ++step) {
      std::vector<std::vector<uint16_t>> outs;
      auto stats = drv.Step({a, b}, {step, 100 * i + step}, &outs);
      ASSERT_TRUE(stats.ok()) << stats.status();
      for (const absl::Status& s : stats->sequence_status) {
        ASSERT_TRUE(s.ok()) << "worker " << i << " step " << step << ": " << s;
      }
      for (int l = 0; l < kLayers; ++l) {
        err = std::max(err, drv.Error(a, 0, l, outs[l], false));
        err = std::max(err, drv.Error(b, 1, l, outs[l], false));
      }
    }
    errors[i] = err;
  };
  std::thread t0(run, 0), t1(run, 1);
  t0.join();
  t1.join();
  EXPECT_LT(errors[0], kTol);
  EXPECT_LT(errors[1], kTol);
}

}  // namespace
}  // namespace pagoda

namespace pagoda {
namespace {

// The backend's summary writes refuse malformed calls before touching the table: a Quest
// selection over it is the same before and after them.
TEST(WorkerBackendSummaries, BadCallsAreRefusedAndChangeNothing) {
  auto backend = MakeCpuWorkerBackend();
  ASSERT_TRUE(backend->Init(Layout(), kQ, 8).ok());
  ASSERT_TRUE(backend->InitSummaries(4).ok());
  // Two pages of rows: page 0 small keys, page 1 large ones.
  std::vector<uint16_t> k(2 * kPage * kKv * kDim);
  for (size_t i = 0; i < k.size(); ++i) {
    k[i] = kernels::FloatToHalf(i < k.size() / 2 ? 0.01f : 1.0f);
  }
  const TensorView rows = TensorView::Contiguous(k.data(), DType::kFp16, {2 * kPage, kKv, kDim});
  ASSERT_TRUE(backend->SummarizeTokens(rows, std::vector<int32_t>{2, 0}).ok());
  std::vector<uint16_t> qv(kQ * kDim, kernels::FloatToHalf(1.f));
  const TensorView q = TensorView::Contiguous(qv.data(), DType::kFp16, {1, kQ, kDim});
  QuestRequest req;
  req.top_k = 1;
  req.cand_indptr = {0, 2};
  req.cand = {2, 0};
  req.keep_indptr = {0, 0};
  req.last_len = {kPage};
  std::vector<int32_t> indptr, chosen;
  ASSERT_TRUE(backend->SelectQuest(q, req, indptr, chosen).ok());
  ASSERT_EQ(chosen.size(), static_cast<size_t>(kKv));
  EXPECT_EQ(chosen[0], 0) << "slot 0 holds the page of large keys";

  TensorView strided = rows;
  strided.shape[0] = kPage;
  strided.strides[0] *= 2;
  const std::vector<std::pair<absl::Status, const char*>> refused = {
      {backend->SummarizeTokens(strided, std::vector<int32_t>{1}), "strided rows"},
      {backend->SummarizeTokens(rows, std::vector<int32_t>{1}), "rows for two pages, one slot"},
      {backend->SummarizeTokens(rows, std::vector<int32_t>{1, 4}), "slot out of range"},
      {backend->SummarizeTokens(rows, std::vector<int32_t>{1, 1}), "slot twice"},
      {backend->UpdateSummaries(std::vector<int32_t>{2}, std::vector<int32_t>{0, 1},
                                std::vector<int32_t>{3}, std::vector<int32_t>{3}),
       "no new token"},
      {backend->UpdateSummaries(std::vector<int32_t>{2}, std::vector<int32_t>{0, 1},
                                std::vector<int32_t>{0}, std::vector<int32_t>{kPage + 1}),
       "past the page"},
      {backend->UpdateSummaries(std::vector<int32_t>{2}, std::vector<int32_t>{0, 8},
                                std::vector<int32_t>{0}, std::vector<int32_t>{1}),
       "pool slot out of range"},
      {backend->UpdateSummaries(std::vector<int32_t>{2, 2}, std::vector<int32_t>{0, 1, 2, 3},
                                std::vector<int32_t>{0, 0}, std::vector<int32_t>{1, 1}),
       "summary slot twice"},
      {backend->UpdateSummaries(std::vector<int32_t>{2}, std::vector<int32_t>{0},
                                std::vector<int32_t>{0}, std::vector<int32_t>{1}),
       "one pool slot for two heads"},
      {backend->CopySummaries(std::vector<int32_t>{2}, std::vector<int32_t>{1, 3}),
       "copy sizes differ"},
      {backend->CopySummaries(std::vector<int32_t>{2}, std::vector<int32_t>{4}),
       "copy to a slot out of range"},
      {backend->CopySummaries(std::vector<int32_t>{2, 0}, std::vector<int32_t>{1, 1}),
       "copy to a slot twice"},
      {backend->CopySummaries(std::vector<int32_t>{2, 1}, std::vector<int32_t>{1, 3}),
       "copy over a source"},
  };
  for (const auto& [s, what] : refused) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << what << ": " << s;
  }

  // KMeans (louiskv's clustering on the backend): the reference's result for good params; bad
  // shapes and page ids are refused before anything is read or written.
  std::vector<uint16_t> page_keys(2 * kKv * kPage * kDim);  // two pages, keys only
  for (size_t i = 0; i < page_keys.size(); ++i) {
    page_keys[i] = kernels::FloatToHalf(static_cast<float>((i * 7919) % 23) / 23.f);
  }
  kernels::PagedKV kv =
      kernels::PackedPagedKV(kernels::DType::kFloat16, 2, kPage, kKv, kDim, page_keys.data());
  kv.v = nullptr;
  kv.stride_page = int64_t{kKv} * kPage * kDim;
  const int32_t pages[2] = {1, 0};
  std::vector<float> cent(kKv * 2 * kDim), cent_ref;
  std::vector<int32_t> asg(kKv * 2 * kPage, -1), sizes(kKv * 2), asg_ref, sizes_ref;
  kernels::KMeansParams km;
  km.kv = kv;
  km.pages = pages;
  km.num_tokens = 2 * kPage;
  km.num_clusters = 2;
  km.centroids = cent.data();
  km.assignment = asg.data();
  km.cluster_size = sizes.data();
  ASSERT_TRUE(kernels::KMeansInitReference(km).ok());
  const std::vector<float> init = cent;
  ASSERT_TRUE(backend->KMeans(km, 3).ok());
  cent_ref = init;
  asg_ref = asg;
  sizes_ref = sizes;
  kernels::KMeansParams ref = km;
  ref.centroids = cent_ref.data();
  ref.assignment = asg_ref.data();
  ref.cluster_size = sizes_ref.data();
  ASSERT_TRUE(kernels::KMeansReference(ref, 3).ok());
  EXPECT_EQ(cent, cent_ref);
  EXPECT_EQ(asg, asg_ref);
  EXPECT_EQ(sizes, sizes_ref);
  const std::vector<int32_t> before = asg;
  kernels::KMeansParams wrong_dim = km, wrong_page = km, no_keys = km;
  wrong_dim.kv.head_dim = kDim * 2;
  const int32_t far[2] = {0, 2};
  wrong_page.pages = far;
  no_keys.kv.k = nullptr;
  for (const auto& [p, what] : {std::pair{wrong_dim, "head_dim"}, std::pair{wrong_page, "page id"},
                                std::pair{no_keys, "no keys"}}) {
    EXPECT_EQ(backend->KMeans(p, 3).code(), absl::StatusCode::kInvalidArgument) << what;
  }
  EXPECT_EQ(backend->KMeans(km, -1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(asg, before);
  std::vector<int32_t> indptr2, chosen2;
  ASSERT_TRUE(backend->SelectQuest(q, req, indptr2, chosen2).ok());
  EXPECT_EQ(chosen2, chosen);
  EXPECT_EQ(indptr2, indptr);
  // A copy moves a summary: slot 3 gets the large keys, and the selection follows it.
  ASSERT_TRUE(backend->CopySummaries(std::vector<int32_t>{0}, std::vector<int32_t>{3}).ok());
  req.cand = {2, 3};
  ASSERT_TRUE(backend->SelectQuest(q, req, indptr2, chosen2).ok());
  EXPECT_EQ(chosen2[0], 3);
}

}  // namespace
}  // namespace pagoda

namespace pagoda {
namespace {

// Fills 8 slots of every head of a CPU backend's pool: slot s holds keys of magnitude 0.05 s and
// values `value` x s.
void FillSlotsByMagnitude(WorkerBackend& backend, float value) {
  std::vector<HeadSlot> dst;
  std::vector<uint8_t> bytes;
  for (int h = 0; h < kKv; ++h) {
    for (int s = 0; s < 8; ++s) {
      dst.push_back({h, s});
      for (int i = 0; i < 2 * kPage * kDim; ++i) {
        const uint16_t x = kernels::FloatToHalf(i < kPage * kDim ? 0.05f * s : value * s);
        bytes.push_back(static_cast<uint8_t>(x & 0xff));
        bytes.push_back(static_cast<uint8_t>(x >> 8));
      }
    }
  }
  ASSERT_TRUE(backend.WriteHeads(dst, bytes).ok());
}

// The CPU backend's closed-form step: the candidates of largest mass are attended between the
// kept entries, the choice reads back, and requests that do not add up change nothing.
TEST(WorkerBackendAttendBestByMass, AttendsTheBestCandidatesAndRefusesBadRequests) {
  auto backend = MakeCpuWorkerBackend();
  ASSERT_TRUE(backend->Init(Layout(), kQ, 8).ok());
  FillSlotsByMagnitude(*backend, 1.f);  // values s: an output tells what it read
  std::vector<uint16_t> qv(kQ * kDim, kernels::FloatToHalf(1.f));
  const TensorView q = TensorView::Contiguous(qv.data(), DType::kFp16, {1, kQ, kDim});
  std::vector<uint16_t> ov(kQ * kDim, 0);
  const TensorView o = TensorView::Contiguous(ov.data(), DType::kFp16, {1, kQ, kDim});
  EXPECT_EQ(backend->FinishChoices(0).status().code(), absl::StatusCode::kFailedPrecondition);
  // Every head: kept slots 0 and 1 (split 1), candidates 2, 6, 4, 7, 3; the two best are 6, 7.
  MassAttendRequest req;
  req.indptr = {0};
  req.out_indptr = {0};
  for (int h = 0; h < kKv; ++h) {
    for (int s : {0, 1, 2, 6, 4, 7, 3}) {
      req.slots.push_back(s);
      req.page_len.push_back(s == 1 ? 3 : kPage);
    }
    req.indptr.push_back(static_cast<int32_t>(req.slots.size()));
    req.keep.push_back(2);
    req.split.push_back(1);
    req.need.push_back(2);
    req.out_indptr.push_back(req.out_indptr.back() + 4);
    req.last_page_len.push_back(3);  // the row's last attended entry: kept slot 1, 3 tokens
  }
  ASSERT_TRUE(backend->AttendBestByMass(q, req, 5, o).ok());
  auto chosen = backend->FinishChoices(5);
  ASSERT_TRUE(chosen.ok());
  for (int h = 0; h < kKv; ++h) {
    // Entries 0 (kept), 3 and 5 (slots 6 and 7, in candidate order), 1 (kept).
    EXPECT_EQ(std::vector<int32_t>(chosen->begin() + 4 * h, chosen->begin() + 4 * h + 4),
              std::vector<int32_t>({0, 3, 5, 1}));
  }
  // The same as attending that table directly.
  std::vector<int32_t> indptr = {0}, indices, last;
  for (int h = 0; h < kKv; ++h) {
    indices.insert(indices.end(), {0, 6, 7, 1});
    indptr.push_back(static_cast<int32_t>(indices.size()));
    last.push_back(3);
  }
  std::vector<uint16_t> want_v(kQ * kDim, 0);
  const TensorView want = TensorView::Contiguous(want_v.data(), DType::kFp16, {1, kQ, kDim});
  ASSERT_TRUE(backend->Attend(q, {kKv, indptr.data(), indices.data(), last.data()}, want).ok());
  EXPECT_EQ(ov, want_v);
  // Bad requests: InvalidArgument / OutOfRange, the output and the last choice untouched.
  const std::vector<uint16_t> before = ov;
  auto bad = [&](auto edit, const char* what) {
    MassAttendRequest r = req;
    edit(r);
    const absl::Status s = backend->AttendBestByMass(q, r, 5, o);
    EXPECT_TRUE(s.code() == absl::StatusCode::kInvalidArgument ||
                s.code() == absl::StatusCode::kOutOfRange)
        << what << ": " << s;
  };
  bad([](MassAttendRequest& r) { r.out_indptr.back() += 1; }, "out_indptr not the sizes");
  bad([](MassAttendRequest& r) { r.keep[0] = 8; }, "keep past the row");
  bad([](MassAttendRequest& r) { r.split[1] = 3; }, "split past keep");
  bad([](MassAttendRequest& r) { r.need[1] = -1; }, "negative need");
  bad([](MassAttendRequest& r) { r.slots[3] = 8; }, "slot out of range");
  bad([](MassAttendRequest& r) { r.last_page_len[0] = 0; }, "empty last page");
  bad([](MassAttendRequest& r) { r.keep.pop_back(); }, "a row short");
  bad([&](MassAttendRequest& r) { r.host_copies = {{q, 65536}}; }, "copy tag out of range");
  bad([&](MassAttendRequest& r) { r.host_copies = {{TensorView{}, 9}}; }, "copy of no tensor");
  bad([&](MassAttendRequest& r) { r.host_copies = {{q, 9}, {q, 9}}; }, "one tag twice");
  bad(
      [&](MassAttendRequest& r) {
        TensorView bf16 = q;
        bf16.dtype = DType::kBf16;
        r.host_copies = {{bf16, 9}};
      },
      "copy of another dtype");
  EXPECT_EQ(backend->FinishCopyToHost(9).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(backend->AttendBestByMass(q, req, 65536, o).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ov, before);
  auto again = backend->FinishChoices(5);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->size(), size_t{4} * kKv);
  // Host copies along with a step (the worker's late reads): read under their tags.
  MassAttendRequest copying = req;
  std::vector<uint16_t> other(kQ * kDim);
  for (size_t i = 0; i < other.size(); ++i) other[i] = static_cast<uint16_t>(i * 3);
  const TensorView other_t = TensorView::Contiguous(other.data(), DType::kFp16, {1, kQ, kDim});
  copying.host_copies = {{q, 7}, {other_t, 8}};
  ASSERT_TRUE(backend->AttendBestByMass(q, copying, 5, o).ok());
  EXPECT_EQ(ov, want_v);
  auto q_back = backend->FinishCopyToHost(7);
  auto other_back = backend->FinishCopyToHost(8);
  ASSERT_TRUE(q_back.ok() && other_back.ok());
  EXPECT_EQ(std::vector<uint16_t>(q_back->begin(), q_back->end()), qv);
  EXPECT_EQ(std::vector<uint16_t>(other_back->begin(), other_back->end()), other);

  // Stored candidates: the first call saves each head's (slots 2, 6, 4, 7, 3 as list 10 + h);
  // the second lists only the kept slots and names the list's entries [1, 4): 6, 4, 7.
  MassAttendRequest saving = req;
  saving.save = {10, 11};
  saving.list = {-1, -1};
  saving.list_off = {0, 0};
  saving.list_count = {0, 0};
  ASSERT_TRUE(backend->AttendBestByMass(q, saving, 5, o).ok());
  EXPECT_EQ(ov, want_v);
  MassAttendRequest named;
  named.indptr = {0};
  named.out_indptr = {0};
  for (int h = 0; h < kKv; ++h) {
    for (int s : {0, 1}) {
      named.slots.push_back(s);
      named.page_len.push_back(s == 1 ? 3 : kPage);
    }
    named.indptr.push_back(static_cast<int32_t>(named.slots.size()));
    named.keep.push_back(2);
    named.split.push_back(1);
    named.need.push_back(2);
    named.out_indptr.push_back(named.out_indptr.back() + 4);
    named.last_page_len.push_back(3);
    named.save.push_back(-1);
    named.list.push_back(10 + h);
    named.list_off.push_back(1);
    named.list_count.push_back(3);
  }
  std::fill(ov.begin(), ov.end(), 0);
  ASSERT_TRUE(backend->AttendBestByMass(q, named, 6, o).ok());
  EXPECT_EQ(ov, want_v);  // the same table: 0, 6, 7, 1
  auto from_list = backend->FinishChoices(6);
  ASSERT_TRUE(from_list.ok());
  for (int h = 0; h < kKv; ++h) {  // entries 2 and 4: the list's 6 and 7 after the 2 listed
    EXPECT_EQ(std::vector<int32_t>(from_list->begin() + 4 * h, from_list->begin() + 4 * h + 4),
              std::vector<int32_t>({0, 2, 4, 1}));
  }
  const std::vector<uint16_t> kept_out = ov;
  auto bad_list = [&](auto edit, const char* what) {
    MassAttendRequest r = named;
    edit(r);
    EXPECT_EQ(backend->AttendBestByMass(q, r, 6, o).code(), absl::StatusCode::kInvalidArgument)
        << what;
  };
  bad_list([](MassAttendRequest& r) { r.list[0] = 99; }, "unknown list");
  bad_list([](MassAttendRequest& r) { r.list_count[1] = 5; }, "past the list's end");
  bad_list([](MassAttendRequest& r) { r.save[0] = 12; }, "a row that saves and reads");
  bad_list([](MassAttendRequest& r) { r.list_off.pop_back(); }, "a list field short");
  backend->DropSlotList(10);
  backend->DropSlotList(77);  // unknown: ignored
  bad_list([](MassAttendRequest& r) {}, "a dropped list");
  EXPECT_EQ(ov, kept_out);
}

// louiskv's rescoring on the backend: masses of the pool's head-pages for a query (one softmax
// per row, so each KV head's row sums to its group size with kSum), and bad calls refused with
// nothing written.
TEST(WorkerBackendScorePages, MassesFollowTheKeysAndBadCallsChangeNothing) {
  auto backend = MakeCpuWorkerBackend();
  ASSERT_TRUE(backend->Init(Layout(), kQ, 8).ok());
  // Values zero; the query (all ones) puts the most mass on the highest slot.
  FillSlotsByMagnitude(*backend, 0.f);
  std::vector<uint16_t> qv(kQ * kDim, kernels::FloatToHalf(1.f));
  const TensorView q = TensorView::Contiguous(qv.data(), DType::kFp16, {1, kQ, kDim});
  std::vector<int32_t> indptr = {0}, slots, len;
  for (int h = 0; h < kKv; ++h) {
    for (int s : {1, 5, 3}) {
      slots.push_back(s);
      len.push_back(s == 3 ? 2 : kPage);  // a partial page
    }
    indptr.push_back(static_cast<int32_t>(slots.size()));
  }
  std::vector<float> mass(slots.size(), -1.f);
  ASSERT_TRUE(
      backend->ScorePages(q, indptr, slots, len, kernels::GroupReduce::kSum, absl::MakeSpan(mass))
          .ok());
  const int group = kQ / kKv;
  for (int h = 0; h < kKv; ++h) {
    const float* m = mass.data() + 3 * h;
    EXPECT_GT(m[1], m[0]);
    EXPECT_GT(m[1], m[2]);
    EXPECT_NEAR(m[0] + m[1] + m[2], group, 1e-4);
  }
  const std::vector<float> before = mass;
  std::vector<int32_t> bad_slot = slots, bad_len = len,
                       short_indptr(indptr.begin(), indptr.end() - 1);
  bad_slot[2] = 8;
  bad_len[0] = kPage + 1;
  std::vector<uint16_t> q2v(2 * kQ * kDim);
  const TensorView q2 = TensorView::Contiguous(q2v.data(), DType::kFp16, {2, kQ, kDim});
  const auto sum = kernels::GroupReduce::kSum;
  const std::vector<std::pair<absl::Status, const char*>> refused = {
      {backend->ScorePages(q, short_indptr, slots, len, sum, absl::MakeSpan(mass)),
       "indptr short of a row"},
      {backend->ScorePages(q2, indptr, slots, len, sum, absl::MakeSpan(mass)),
       "a batch of two for one row per head"},
      {backend->ScorePages(q, indptr, bad_slot, len, sum, absl::MakeSpan(mass)),
       "slot out of range"},
      {backend->ScorePages(q, indptr, slots, bad_len, sum, absl::MakeSpan(mass)),
       "page longer than a page"},
      {backend->ScorePages(q, indptr, slots, len, sum, absl::MakeSpan(mass).subspan(1)),
       "one mass short"},
  };
  for (const auto& [s, what] : refused) {
    EXPECT_TRUE(s.code() == absl::StatusCode::kInvalidArgument ||
                s.code() == absl::StatusCode::kOutOfRange)
        << what << ": " << s;
  }
  EXPECT_EQ(mass, before);
}

}  // namespace
}  // namespace pagoda
