// DecodeWorker's sequence edits and bidirectional blocks (Extend, Truncate, AttendBlock,
// CommitBlock) over a real embedded Store with the CPU backend, checked against the shadow model
// of worker_test_util.h.
#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "pagoda/client/decode_worker.h"
#include "pagoda/kernels/dtype.h"
#include "pagoda/kvstore/prefix.h"
#include "pagoda/retriever/selector.h"
#include "worker_test_util.h"

namespace pagoda {
namespace {

using namespace worker_test;  // NOLINT: the shared test helpers

// A block of tokens `ids` at positions [at, at + n) of layer l: its queries [n, kQ, kDim] and K/V
// [n, kKv, kDim], from the shadow model over `toks` (which holds the block's ids at `at`).
struct Block {
  std::vector<uint16_t> q, k, v, o;
  Block(int l, const std::vector<int32_t>& toks, int64_t at, int64_t n) {
    for (int64_t t = at; t < at + n; ++t) {
      for (int h = 0; h < kQ; ++h) {
        for (int d = 0; d < kDim; ++d) q.push_back(Q(l, t, toks[t], h, d));
      }
    }
    k = Rows(0, l, toks, at, n);
    v = Rows(1, l, toks, at, n);
    o.assign(q.size(), 0xffff);
  }
  int64_t n() const { return static_cast<int64_t>(k.size()) / (kKv * kDim); }
  TensorView Q_() { return TensorView::Contiguous(q.data(), DType::kFp16, {n(), kQ, kDim}); }
  TensorView K() { return TensorView::Contiguous(k.data(), DType::kFp16, {n(), kKv, kDim}); }
  TensorView V() { return TensorView::Contiguous(v.data(), DType::kFp16, {n(), kKv, kDim}); }
  TensorView O() { return TensorView::Contiguous(o.data(), DType::kFp16, {n(), kQ, kDim}); }
};

// Max error of a block's outputs against exact attention over the positions the worker says each
// KV head attended (every query of the block the same positions: bidirectional).
double BlockError(DecodeWorker& w, SequenceId id, int l, const std::vector<int32_t>& toks,
                  int64_t at, const Block& b) {
  auto attended = w.AttendedPositions(id, l);
  EXPECT_TRUE(attended.ok()) << attended.status();
  if (!attended.ok()) return 1e9;
  double err = 0;
  for (int64_t i = 0; i < b.n(); ++i) {
    for (int qh = 0; qh < kQ; ++qh) {
      const auto ref = QueryAttention(l, toks, at + i, qh, (*attended)[qh / (kQ / kKv)]);
      for (int d = 0; d < kDim; ++d) {
        err = std::max(err, std::abs(D(b.o[(i * kQ + qh) * kDim + d]) - ref[d]));
      }
    }
  }
  return err;
}

std::vector<int32_t> Ids(int n, int32_t seed) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back(seed * 1000 + 7 * i);
  return t;
}

// A worker over a fresh store (`w` and `drv` null, with a test failure, when it cannot be made).
struct Fixture {
  explicit Fixture(const DecodeWorkerOptions& o) : store(OpenStore(dir.path())) {
    auto made = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
    EXPECT_TRUE(made.ok()) << made.status();
    if (!made.ok()) return;
    w = std::move(*made);
    drv = std::make_unique<Driver>(w.get());
  }
  // A prefilled sequence of `prompt` tokens, and `n` block token ids after it: toks is the
  // sequence's tokens followed by them.
  SequenceId OpenWithBlock(int prompt, int32_t seed, int n, std::vector<int32_t>& ids,
                           std::vector<int32_t>& toks) {
    const SequenceId id = drv->Open(Prompt(prompt, seed));
    ids = Ids(n, seed + 1);
    toks = drv->tokens(id);
    toks.insert(toks.end(), ids.begin(), ids.end());
    return id;
  }
  TempDir dir;
  std::unique_ptr<Store> store;
  std::unique_ptr<DecodeWorker> w;
  std::unique_ptr<Driver> drv;
};

TEST(WorkerBlocks, ABlockAttendsTheContextAndItselfThenCommitsAndDecodeGoesOn) {
  Fixture f(Options(retriever::Policy::kQuest, 4096, 64));
  ASSERT_NE(f.w, nullptr);
  std::vector<int32_t> ids, toks;
  const SequenceId id = f.OpenWithBlock(12, 1, 6, ids, toks);
  for (int l = 0; l < kLayers; ++l) {
    Block b(l, toks, 12, 6);
    auto st = f.w->AttendBlock(id, l, b.Q_(), b.K(), b.V(), b.O());
    ASSERT_TRUE(st.ok()) << st.status();
    EXPECT_EQ(st->retrievals, 0);                       // the budget covers the context
    EXPECT_EQ(st->attended_head_pages, (3 + 2) * kKv);  // 3 context pages, 2 block pages
    EXPECT_EQ(st->fetched_head_pages + st->pool_hits, 3 * kKv);
    auto attended = f.w->AttendedPositions(id, l);
    ASSERT_TRUE(attended.ok());
    for (const auto& row : *attended) EXPECT_EQ(row, AllPositions(18));  // no causal mask
    EXPECT_LT(BlockError(*f.w, id, l, toks, 12, b), kTol) << l;
  }
  // The block is not part of the sequence until it is committed.
  EXPECT_EQ(*f.w->Length(id, 0), 12);
  ASSERT_TRUE(f.w->Extend(id, ids).ok());
  EXPECT_EQ(f.w->Plan({id}, {1}).status().code(), absl::StatusCode::kFailedPrecondition);
  for (int l = 0; l < kLayers; ++l) ASSERT_TRUE(f.w->CommitBlock(id, l).ok()) << l;
  f.drv->Extended(id, ids);
  ASSERT_TRUE(f.w->Flush().ok());
  for (int l = 0; l < kLayers; ++l) {
    EXPECT_EQ(*f.w->Length(id, l), 18);
    const PageKeyExtra extra{"model", static_cast<uint32_t>(l), {}};
    auto keys = f.w->PageKeys(id, l);
    ASSERT_TRUE(keys.ok());
    EXPECT_EQ(*keys, ChainPageKeys(absl::MakeConstSpan(toks).subspan(0, 16), kPage, extra));
    for (const PageKey& key : *keys) EXPECT_TRUE(f.store->Exists("t", key));
  }
  // Decode continues from the block's open page, exactly.
  for (int step = 0; step < 5; ++step) {
    std::vector<std::vector<uint16_t>> outs;
    auto stats = f.drv->Step({id}, {step + 50}, &outs);
    ASSERT_TRUE(stats.ok()) << stats.status();
    for (int l = 0; l < kLayers; ++l) {
      EXPECT_LT(f.drv->Error(id, 0, l, outs[l], /*dense=*/true), kTol) << step;
    }
  }
}

class BlockPolicyTest : public ::testing::TestWithParam<retriever::Policy> {};

TEST_P(BlockPolicyTest, SparseBlocksAttendWhatTheRetrieverSelectsForTheMeanQuery) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  const DecodeWorkerOptions o = Options(GetParam(), 4 * kPage, 64);
  auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(w.ok()) << w.status();
  Driver drv(w->get());
  const SequenceId id = drv.Open(Prompt(40, 3));
  RefSelectors ref = ReferenceSelectors(GetParam(), o, drv.tokens(id));
  std::vector<int32_t> toks = drv.tokens(id);
  const std::vector<int32_t> ids = Ids(8, 4);
  toks.insert(toks.end(), ids.begin(), ids.end());
  for (int l = 0; l < kLayers; ++l) {
    Block b(l, toks, 40, 8);
    auto st = (*w)->AttendBlock(id, l, b.Q_(), b.K(), b.V(), b.O());
    ASSERT_TRUE(st.ok()) << st.status();
    EXPECT_EQ(st->retrievals, 1);
    // The block's mean query, as the worker forms it (float mean, rounded to the dtype).
    std::vector<uint16_t> mean(kQ * kDim);
    for (int j = 0; j < kQ * kDim; ++j) {
      float sum = 0;
      for (int64_t i = 0; i < 8; ++i) sum += kernels::HalfToFloat(b.q[i * kQ * kDim + j]);
      mean[j] = Half(sum / 8.f);
    }
    auto want = ref[l]->Select(mean);
    ASSERT_TRUE(want.ok()) << want.status();
    auto rows = (*w)->LastRows(id, l);
    ASSERT_TRUE(rows.ok());
    for (int h = 0; h < kKv; ++h) {
      std::vector<int32_t> expect(want->pages.indices.begin() + want->pages.indptr[h],
                                  want->pages.indices.begin() + want->pages.indptr[h + 1]);
      std::sort(expect.begin(), expect.end());
      expect.push_back(10);  // the block's pages
      expect.push_back(11);
      EXPECT_EQ((*rows)[h], expect) << "layer " << l << " head " << h;
    }
    EXPECT_LT(BlockError(**w, id, l, toks, 40, b), kTol) << l;
  }
}

INSTANTIATE_TEST_SUITE_P(Policies, BlockPolicyTest,
                         ::testing::Values(retriever::Policy::kQuest,
                                           retriever::Policy::kHierarchical),
                         [](const auto& info) {
                           return std::string(retriever::PolicyName(info.param));
                         });

TEST(WorkerBlocks, KeptPagesAreNotRewritten) {
  Fixture f(Options(retriever::Policy::kQuest, 4096, 64));
  ASSERT_NE(f.w, nullptr);
  std::vector<int32_t> ids, toks;
  const SequenceId id = f.OpenWithBlock(8, 5, 8, ids, toks);
  Block b(0, toks, 8, 8);
  ASSERT_TRUE(f.w->AttendBlock(id, 0, b.Q_(), b.K(), b.V(), b.O()).ok());
  const std::vector<uint16_t> first = b.o;
  // The same K/V kept in place: the same output.
  const std::vector<uint8_t> keep_all = {1, 1};
  std::fill(b.o.begin(), b.o.end(), 0xffff);
  ASSERT_TRUE(f.w->AttendBlock(id, 0, b.Q_(), b.K(), b.V(), b.O(), keep_all).ok());
  EXPECT_EQ(b.o, first);
  // Page 1 kept while the caller passes other values for it: the worker attends what it holds.
  Block other = b;
  for (size_t i = other.k.size() / 2; i < other.k.size(); ++i) other.k[i] = Half(0.9f);
  const std::vector<uint8_t> keep_second = {0, 1};
  ASSERT_TRUE(
      f.w->AttendBlock(id, 0, other.Q_(), other.K(), other.V(), other.O(), keep_second).ok());
  EXPECT_EQ(other.o, first);
  // Written again: the new values count.
  ASSERT_TRUE(f.w->AttendBlock(id, 0, other.Q_(), other.K(), other.V(), other.O()).ok());
  EXPECT_NE(other.o, first);
  // Keeping pages of a block of another size, or with the wrong number of flags: refused.
  Block shorter(0, toks, 8, 4);
  const std::vector<uint8_t> keep_one = {1};
  EXPECT_EQ(f.w->AttendBlock(id, 0, shorter.Q_(), shorter.K(), shorter.V(), shorter.O(), keep_one)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.w->AttendBlock(id, 0, b.Q_(), b.K(), b.V(), b.O(), keep_one).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(WorkerBlocks, TruncateCutsThePagesAndDecodeGoesOnExactly) {
  for (retriever::Policy policy : {retriever::Policy::kQuest, retriever::Policy::kHierarchical}) {
    SCOPED_TRACE(retriever::PolicyName(policy));
    TempDir dir;
    auto store = OpenStore(dir.path());
    auto w =
        DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), Options(policy, 4 * kPage, 64));
    ASSERT_TRUE(w.ok()) << w.status();
    Driver drv(w->get());
    const SequenceId id = drv.Open(Prompt(30, 7));
    for (int step = 0; step < 2; ++step) ASSERT_TRUE(drv.Step({id}, {step}).ok());  // 32 tokens
    const std::vector<PageKey> before = *(*w)->PageKeys(id, 1);
    // Refused, nothing changed: not a page multiple, zero, past the end, an unknown sequence.
    for (int64_t bad : {13, 0, 36}) {
      EXPECT_EQ((*w)->Truncate(id, bad).code(), absl::StatusCode::kInvalidArgument) << bad;
    }
    EXPECT_EQ((*w)->Truncate(id + 100, 12).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(*(*w)->Length(id, 0), 32);
    ASSERT_TRUE((*w)->Truncate(id, 12).ok());
    drv.Truncated(id, 12);
    for (int l = 0; l < kLayers; ++l) EXPECT_EQ(*(*w)->Length(id, l), 12);
    EXPECT_EQ(*(*w)->PageKeys(id, 1), std::vector<PageKey>(before.begin(), before.begin() + 3));
    // Decode over the cut sequence: other tokens now, attention over exactly its positions.
    for (int step = 0; step < 12; ++step) {
      std::vector<std::vector<uint16_t>> outs;
      auto stats = drv.Step({id}, {900 + step}, &outs);
      ASSERT_TRUE(stats.ok()) << stats.status();
      for (int l = 0; l < kLayers; ++l) {
        auto attended = (*w)->AttendedPositions(id, l);
        ASSERT_TRUE(attended.ok());
        for (const auto& row : *attended) {
          ASSERT_FALSE(row.empty());
          EXPECT_LT(row.back(), 13 + step);
        }
        EXPECT_LT(drv.Error(id, 0, l, outs[l], /*dense=*/false), kTol) << step;
      }
    }
  }
}

TEST(WorkerBlocks, ExtendThenPrefillSplicesTokensIntoTheContext) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(),
                                Options(retriever::Policy::kHierarchical, 4096, 64));
  ASSERT_TRUE(w.ok()) << w.status();
  Driver drv(w->get());
  const SequenceId id = drv.Open(Prompt(7, 8));
  ASSERT_TRUE(drv.Step({id}, {1}).ok());  // 8 tokens
  const std::vector<int32_t> more = Ids(9, 9);
  ASSERT_TRUE((*w)->Extend(id, more).ok());
  drv.Extended(id, more);
  const std::vector<int32_t>& toks = drv.tokens(id);
  for (int l = 0; l < kLayers; ++l) {
    std::vector<uint16_t> k = Rows(0, l, toks, 8, 9), v = Rows(1, l, toks, 8, 9);
    ASSERT_TRUE((*w)->Prefill(id, l, TensorView::Contiguous(k.data(), DType::kFp16, {9, kKv, kDim}),
                              TensorView::Contiguous(v.data(), DType::kFp16, {9, kKv, kDim}))
                    .ok());
  }
  for (int step = 0; step < 6; ++step) {
    std::vector<std::vector<uint16_t>> outs;
    auto stats = drv.Step({id}, {70 + step}, &outs);
    ASSERT_TRUE(stats.ok()) << stats.status();
    for (int l = 0; l < kLayers; ++l) {
      EXPECT_LT(drv.Error(id, 0, l, outs[l], /*dense=*/true), kTol) << step;
    }
  }
  // 23 tokens: an open page, so no Extend until it fills.
  EXPECT_EQ((*w)->Extend(id, more).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(*(*w)->Length(id, 0), 23);
  ASSERT_TRUE((*w)->Flush().ok());
  const PageKeyExtra extra{"model", 0, {}};
  EXPECT_EQ(*(*w)->PageKeys(id, 0),
            ChainPageKeys(absl::MakeConstSpan(drv.tokens(id)).subspan(0, 20), kPage, extra));
}

TEST(WorkerBlocks, BadBlockCallsAreRefusedAndChangeNothing) {
  // Room for 4 context pages and a 2-page block per head, no more.
  Fixture f(Options(retriever::Policy::kQuest, 4096, 8));
  ASSERT_NE(f.w, nullptr);
  std::vector<int32_t> ids, toks;
  const SequenceId id = f.OpenWithBlock(16, 10, 8, ids, toks);
  Block b(0, toks, 16, 8);
  auto code = [&](const absl::StatusOr<WorkerStepStats>& s) { return s.status().code(); };
  using absl::StatusCode;
  // Shapes, dtypes, layers, unknown sequences.
  TensorView wrong = b.K();
  wrong.shape[1] = kKv + 1;
  EXPECT_EQ(code(f.w->AttendBlock(id, 0, b.Q_(), wrong, b.V(), b.O())),
            StatusCode::kInvalidArgument);
  TensorView bf = b.Q_();
  bf.dtype = DType::kBf16;
  EXPECT_EQ(code(f.w->AttendBlock(id, 0, bf, b.K(), b.V(), b.O())), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(f.w->AttendBlock(id, kLayers, b.Q_(), b.K(), b.V(), b.O())),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code(f.w->AttendBlock(id + 9, 0, b.Q_(), b.K(), b.V(), b.O())),
            StatusCode::kInvalidArgument);
  Block inf = b;
  inf.k[5] = 0x7c00;
  EXPECT_EQ(code(f.w->AttendBlock(id, 0, inf.Q_(), inf.K(), inf.V(), inf.O())),
            StatusCode::kInvalidArgument);
  // No block yet, no Extend yet.
  EXPECT_EQ(f.w->CommitBlock(id, 0).code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(f.w->AttendBlock(id, 0, b.Q_(), b.K(), b.V(), b.O()).ok());
  EXPECT_EQ(f.w->CommitBlock(id, 0).code(), StatusCode::kFailedPrecondition);
  // A block that does not fit beside the context: 4 + 3 pages > 8 - 2 (the first block's).
  Block big(1, toks, 16, 8);
  std::vector<int32_t> longer = toks;
  longer.insert(longer.end(), ids.begin(), ids.begin() + 4);
  Block three(1, longer, 16, 12);
  const auto rows = *f.w->LastRows(id, 1);
  EXPECT_EQ(code(f.w->AttendBlock(id, 1, three.Q_(), three.K(), three.V(), three.O())),
            StatusCode::kResourceExhausted);
  EXPECT_EQ(*f.w->LastRows(id, 1), rows);
  ASSERT_TRUE(f.w->AttendBlock(id, 1, big.Q_(), big.K(), big.V(), big.O()).ok());
  // Extend by another count than the block's: CommitBlock refuses.
  ASSERT_TRUE(f.w->Extend(id, absl::MakeConstSpan(ids).subspan(0, 4)).ok());
  EXPECT_EQ(f.w->CommitBlock(id, 0).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(*f.w->Length(id, 0), 16);
  // Inside a step: refused.
  auto w2 = DecodeWorker::Create(f.store.get(), MakeCpuWorkerBackend(),
                                 Options(retriever::Policy::kQuest, 4096, 64));
  ASSERT_TRUE(w2.ok());
  Driver drv2(w2->get());
  const SequenceId id2 = drv2.Open(Prompt(16, 12));
  auto plan = (*w2)->Plan({id2}, {5});
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(code((*w2)->AttendBlock(id2, 0, b.Q_(), b.K(), b.V(), b.O())),
            StatusCode::kFailedPrecondition);
  EXPECT_EQ((*w2)->Extend(id2, ids).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ((*w2)->Truncate(id2, 8).code(), StatusCode::kFailedPrecondition);
  // A layer that ends inside a page cannot start a block.
  std::vector<int32_t> after = drv2.tokens(id2);
  after.push_back(5);
  for (int l = 0; l < kLayers; ++l) {
    Block one(l, after, 16, 1);
    ASSERT_TRUE((*w2)->Attend(*plan, l, one.Q_(), one.K(), one.V(), one.O()).ok());
  }
  ASSERT_TRUE((*w2)->Finish(*plan).ok());
  EXPECT_EQ(code((*w2)->AttendBlock(id2, 0, b.Q_(), b.K(), b.V(), b.O())),
            StatusCode::kFailedPrecondition);
}

TEST(WorkerBlocks, ABlockIsItsSequencesAloneAndLeavesThePoolWithIt) {
  Fixture f(Options(retriever::Policy::kQuest, 4096, 64));
  ASSERT_NE(f.w, nullptr);
  std::vector<int32_t> ids, toks;
  const SequenceId id = f.OpenWithBlock(16, 15, 8, ids, toks);
  Block b(0, toks, 16, 8);
  const int64_t before = f.w->Stats().pool_used;
  ASSERT_TRUE(f.w->AttendBlock(id, 0, b.Q_(), b.K(), b.V(), b.O()).ok());
  const int64_t with_block = f.w->Stats().pool_used;
  EXPECT_GE(with_block, before + 2 * kKv);  // the block's two pages, every head
  // A fork shares the context, not the block: it has none to keep or commit.
  auto child = f.w->Fork(id);
  ASSERT_TRUE(child.ok()) << child.status();
  const std::vector<uint8_t> keep_all = {1, 1};
  EXPECT_EQ(f.w->AttendBlock(*child, 0, b.Q_(), b.K(), b.V(), b.O(), keep_all).status().code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(f.w->Extend(*child, ids).ok());
  EXPECT_EQ(f.w->CommitBlock(*child, 0).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(f.w->Close(*child).ok());
  // The parent's block is intact (kept pages, same output), and leaves the pool on Close.
  const std::vector<uint16_t> first = b.o;
  ASSERT_TRUE(f.w->AttendBlock(id, 0, b.Q_(), b.K(), b.V(), b.O(), keep_all).ok());
  EXPECT_EQ(b.o, first);
  EXPECT_EQ(f.w->Stats().pool_used, with_block);  // nothing new: the same block, resident pages
  ASSERT_TRUE(f.w->Close(id).ok());
  // Its context pages stay cached; the block's owned slots are free again.
  EXPECT_EQ(f.w->Stats().pool_used, with_block - 2 * kKv);
}

// Random interleavings of decode steps, blocks (committed or dropped), Extend + Prefill and
// Truncate on two sequences sharing a prefix, with a pool small enough to evict: every output is
// exact attention over the shadow model's K/V, and every layer's pages are the chained keys of the
// sequence's tokens, after every operation.
TEST(WorkerBlocks, RandomEditsKeepEveryOutputExactAndEveryKeyChained) {
  for (retriever::Policy policy : {retriever::Policy::kQuest, retriever::Policy::kHierarchical}) {
    SCOPED_TRACE(retriever::PolicyName(policy));
    TempDir dir;
    auto store = OpenStore(dir.path());
    auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), Options(policy, 4096, 40));
    ASSERT_TRUE(w.ok()) << w.status();
    Driver drv(w->get());
    const SequenceId a = drv.Open(Prompt(13, 20));
    ASSERT_TRUE(drv.Step({a}, {1}).ok());
    ASSERT_TRUE(drv.Step({a}, {2}).ok());
    ASSERT_TRUE(drv.Step({a}, {3}).ok());  // 16 tokens
    auto forked = (*w)->Fork(a);
    ASSERT_TRUE(forked.ok()) << forked.status();
    const SequenceId b = *forked;
    drv.Forked(a, b);
    std::mt19937 rng(7);
    int32_t next_id = 500;
    auto check_keys = [&](SequenceId id) {
      const std::vector<int32_t>& t = drv.tokens(id);
      ASSERT_TRUE((*w)->Flush().ok());
      for (int l = 0; l < kLayers; ++l) {
        ASSERT_EQ(*(*w)->Length(id, l), static_cast<int64_t>(t.size()));
        const PageKeyExtra extra{"model", static_cast<uint32_t>(l), {}};
        const size_t full = t.size() / kPage * kPage;
        ASSERT_EQ(*(*w)->PageKeys(id, l),
                  ChainPageKeys(absl::MakeConstSpan(t).subspan(0, full), kPage, extra));
      }
    };
    for (int op = 0; op < 60; ++op) {
      const SequenceId id = rng() % 2 == 0 ? a : b;
      SCOPED_TRACE(testing::Message() << "op " << op << " sequence " << id);
      const int64_t len = static_cast<int64_t>(drv.tokens(id).size());
      const int kind = static_cast<int>(rng() % 4);
      if (kind == 0 || len % kPage != 0) {  // a decode step (both sequences when aligned)
        std::vector<std::vector<uint16_t>> outs;
        auto st = drv.Step({id}, {next_id++}, &outs);
        ASSERT_TRUE(st.ok()) << st.status();
        for (int l = 0; l < kLayers; ++l) {
          ASSERT_LT(drv.Error(id, 0, l, outs[l], /*dense=*/true), kTol) << "layer " << l;
        }
      } else if (kind == 1 && len < 96) {  // a block, denoised twice, committed or dropped
        const int64_t n = 3 + rng() % 8;
        std::vector<int32_t> ids(n);
        for (int32_t& x : ids) x = next_id++;
        std::vector<int32_t> toks = drv.tokens(id);
        toks.insert(toks.end(), ids.begin(), ids.end());
        for (int l = 0; l < kLayers; ++l) {
          for (int rep = 0; rep < 2; ++rep) {
            Block blk(l, toks, len, n);
            auto st = (*w)->AttendBlock(id, l, blk.Q_(), blk.K(), blk.V(), blk.O());
            ASSERT_TRUE(st.ok()) << st.status();
            ASSERT_LT(BlockError(**w, id, l, toks, len, blk), kTol) << "layer " << l;
          }
        }
        if (rng() % 3 != 0) {
          ASSERT_TRUE((*w)->Extend(id, ids).ok());
          for (int l = 0; l < kLayers; ++l) ASSERT_TRUE((*w)->CommitBlock(id, l).ok());
          drv.Extended(id, ids);
        }
      } else if (kind == 2 && len > kPage) {  // cut back to a random page boundary
        const int64_t to = kPage * (1 + static_cast<int64_t>(rng() % (len / kPage)));
        ASSERT_TRUE((*w)->Truncate(id, std::min(to, len / kPage * kPage)).ok());
        drv.Truncated(id, std::min(to, len / kPage * kPage));
      } else if (len < 96) {  // splice tokens in through Prefill
        const int64_t n = 1 + rng() % 9;
        std::vector<int32_t> ids(n);
        for (int32_t& x : ids) x = next_id++;
        ASSERT_TRUE((*w)->Extend(id, ids).ok());
        drv.Extended(id, ids);
        const std::vector<int32_t>& t = drv.tokens(id);
        for (int l = 0; l < kLayers; ++l) {
          std::vector<uint16_t> k = Rows(0, l, t, len, n), v = Rows(1, l, t, len, n);
          ASSERT_TRUE((*w)->Prefill(id, l,
                                    TensorView::Contiguous(k.data(), DType::kFp16, {n, kKv, kDim}),
                                    TensorView::Contiguous(v.data(), DType::kFp16, {n, kKv, kDim}))
                          .ok());
        }
      }
      check_keys(a);
      check_keys(b);
    }
    EXPECT_GT((*w)->Stats().pool_evictions, 0);
  }
}

TEST(WorkerBlocks, LouiskvRefusesEdits) {
  Fixture f(Options(retriever::Policy::kBoundary, 4 * kPage, 64));
  ASSERT_NE(f.w, nullptr);
  std::vector<int32_t> ids, toks;
  const SequenceId id = f.OpenWithBlock(32, 13, 4, ids, toks);
  Block b(0, toks, 32, 4);
  EXPECT_EQ(f.w->AttendBlock(id, 0, b.Q_(), b.K(), b.V(), b.O()).status().code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(f.w->Extend(id, ids).code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(f.w->Truncate(id, 16).code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(*f.w->Length(id, 0), 32);
}

}  // namespace
}  // namespace pagoda
