// DiffusionSession over a real embedded Store (host + SSD tiers, RocksDB) with the CPU worker
// backend.
#include "pagoda/client/diffusion_session.h"

#include <stdlib.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "pagoda/kernels/dtype.h"
#include "pagoda/kvstore/prefix.h"
#include "worker_test_util.h"

namespace pagoda {
namespace {

using worker_test::kDim;
using worker_test::kKv;
using worker_test::kPage;
using worker_test::kQ;
using worker_test::Layout;
using worker_test::TempDir;
constexpr int kBlock = 8, kBlockPages = kBlock / kPage;

uint64_t PageBytes() { return Layout().PageBytes(); }
uint64_t HeadPageBytes() { return PageBytes() / kKv; }

// One page per segment: small host tiers (4-16 pages) move pages to SSD one at a time.
std::unique_ptr<Store> OpenStore(const std::string& dir, uint64_t host_pages) {
  return worker_test::OpenStore(dir, host_pages, /*segment_pages=*/1);
}

DiffusionSessionOptions DenseOptions(int32_t pool_pages = 64) {
  DiffusionSessionOptions o;
  o.layout = Layout();
  o.q_heads = kQ;
  o.block_tokens = kBlock;
  o.pool_pages = pool_pages;
  return o;
}

uint16_t Half(float x) { return kernels::FloatToHalf(x); }

// The sequence as the model would finally see it: K/V [kv, T, dim] in fp16 bits, and token ids.
// `cur_k` / `cur_v` are the K/V a step attends: the true values with the open block overwritten
// by its noisy K/V.
struct Sequence {
  int64_t tokens;
  std::vector<int32_t> ids;
  std::vector<uint16_t> k, v;
  std::vector<uint16_t> cur_k, cur_v;
  std::mt19937 rng;

  Sequence(int64_t t, uint32_t seed) : tokens(t), rng(seed) {
    std::normal_distribution<float> n(0.f, 1.f);
    k.resize(kKv * t * kDim);
    v.resize(k.size());
    for (size_t i = 0; i < k.size(); ++i) {
      k[i] = Half(n(rng));
      v[i] = Half(n(rng));
    }
    for (int64_t i = 0; i < t; ++i) ids.push_back(static_cast<int32_t>(rng() % 1000));
    cur_k = k;
    cur_v = v;
  }
  // Rows [first, first + n) of K or V: [kv, n, dim].
  std::vector<uint16_t> Slice(const std::vector<uint16_t>& x, int64_t first, int64_t n) const {
    std::vector<uint16_t> out(kKv * n * kDim);
    for (int h = 0; h < kKv; ++h) {
      std::memcpy(&out[h * n * kDim], &x[(h * tokens + first) * kDim], n * kDim * 2);
    }
    return out;
  }
  // Denoising step `step` of `steps` for the block at `first`: K/V = true + noise that shrinks to
  // zero at the last step (the block converges to its final K/V). Updates cur_k / cur_v.
  void Noisy(int64_t first, int step, int steps, std::vector<uint16_t>* bk,
             std::vector<uint16_t>* bv) {
    std::normal_distribution<float> n(0.f, 1.f);
    const float sigma = 0.5f * static_cast<float>(steps - 1 - step) / static_cast<float>(steps);
    for (int h = 0; h < kKv; ++h) {
      for (int64_t t = first; t < first + kBlock; ++t) {
        for (int d = 0; d < kDim; ++d) {
          const int64_t i = (h * tokens + t) * kDim + d;
          cur_k[i] = sigma == 0.f ? k[i] : Half(kernels::HalfToFloat(k[i]) + sigma * n(rng));
          cur_v[i] = sigma == 0.f ? v[i] : Half(kernels::HalfToFloat(v[i]) + sigma * n(rng));
        }
      }
    }
    *bk = Slice(cur_k, first, kBlock);
    *bv = Slice(cur_v, first, kBlock);
  }
  // Queries of a block: [kBlock, q_heads, dim].
  std::vector<uint16_t> Queries() {
    std::normal_distribution<float> n(0.f, 1.f);
    std::vector<uint16_t> q(kBlock * kQ * kDim);
    for (uint16_t& x : q) x = Half(n(rng));
    return q;
  }
  // Store page p as the session must have written it.
  std::vector<uint8_t> PageBytesOf(int64_t p) const {
    std::vector<uint16_t> page(2 * kKv * kPage * kDim);
    for (int h = 0; h < kKv; ++h) {
      std::memcpy(&page[h * kPage * kDim], &k[(h * tokens + p * kPage) * kDim], kPage * kDim * 2);
      std::memcpy(&page[(kKv + h) * kPage * kDim], &v[(h * tokens + p * kPage) * kDim],
                  kPage * kDim * 2);
    }
    std::vector<uint8_t> bytes(page.size() * 2);
    std::memcpy(bytes.data(), page.data(), bytes.size());
    return bytes;
  }
};

// Float64 bidirectional attention of every query of the block over the tokens of the natural
// pages in `rows` (per KV head), reading cur_k / cur_v.
std::vector<double> Reference(const Sequence& seq, const std::vector<uint16_t>& q,
                              const std::vector<std::vector<int32_t>>& rows) {
  std::vector<double> out(kBlock * kQ * kDim, 0.0);
  for (int i = 0; i < kBlock; ++i) {
    for (int hq = 0; hq < kQ; ++hq) {
      const int h = hq / (kQ / kKv);
      std::vector<int64_t> toks;
      for (int32_t p : rows[h]) {
        for (int64_t t = int64_t{p} * kPage; t < (p + 1) * kPage; ++t) toks.push_back(t);
      }
      std::vector<double> s(toks.size());
      double mx = -1e300;
      const uint16_t* qi = &q[(i * kQ + hq) * kDim];
      for (size_t j = 0; j < toks.size(); ++j) {
        double dot = 0;
        for (int d = 0; d < kDim; ++d) {
          dot += double{kernels::HalfToFloat(qi[d])} *
                 kernels::HalfToFloat(seq.cur_k[(h * seq.tokens + toks[j]) * kDim + d]);
        }
        s[j] = dot / std::sqrt(double{kDim});
        mx = std::max(mx, s[j]);
      }
      double sum = 0;
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (size_t j = 0; j < toks.size(); ++j) {
        for (int d = 0; d < kDim; ++d) {
          out[(i * kQ + hq) * kDim + d] +=
              s[j] / sum * kernels::HalfToFloat(seq.cur_v[(h * seq.tokens + toks[j]) * kDim + d]);
        }
      }
    }
  }
  return out;
}

// Every page 0..pages-1 in every row: dense attention over the whole visible sequence.
std::vector<std::vector<int32_t>> AllPages(int64_t pages) {
  std::vector<std::vector<int32_t>> rows(kKv);
  for (auto& row : rows) {
    for (int32_t p = 0; p < pages; ++p) row.push_back(p);
  }
  return rows;
}

void ExpectClose(const std::vector<uint16_t>& o, const std::vector<double>& ref,
                 const std::string& where) {
  ASSERT_EQ(o.size(), ref.size());
  for (size_t i = 0; i < o.size(); ++i) {
    ASSERT_NEAR(kernels::HalfToFloat(o[i]), ref[i], 3e-3 + 2e-3 * std::abs(ref[i]))
        << where << " elem " << i;
  }
}

absl::Status Prefill(DiffusionSession& s, const Sequence& seq, int64_t n) {
  return s.Prefill(absl::MakeConstSpan(seq.ids).subspan(0, n), seq.Slice(seq.k, 0, n),
                   seq.Slice(seq.v, 0, n));
}

absl::Span<const int32_t> BlockIds(const Sequence& seq, int64_t first) {
  return absl::MakeConstSpan(seq.ids).subspan(first, kBlock);
}

TEST(DiffusionSessionTest, DenoisingStepsEqualDenseBidirectionalAttention) {
  TempDir dir;
  auto store = OpenStore(dir.path(), 256);
  const int64_t prompt = 12, blocks = 3;
  const int steps = 4;
  Sequence seq(prompt + blocks * kBlock, 1);
  auto s = DiffusionSession::Create(store.get(), MakeCpuWorkerBackend(), DenseOptions());
  ASSERT_TRUE(s.ok()) << s.status();
  DiffusionSession& session = **s;
  ASSERT_TRUE(Prefill(session, seq, prompt).ok());
  EXPECT_EQ(session.cached_tokens(), prompt);
  for (int b = 0; b < blocks; ++b) {
    const int64_t first = prompt + b * kBlock;
    for (int i = 0; i < steps; ++i) {
      std::vector<uint16_t> bk, bv, o(kBlock * kQ * kDim);
      seq.Noisy(first, i, steps, &bk, &bv);
      const std::vector<uint16_t> q = seq.Queries();
      auto st = session.Denoise(q, bk, bv, absl::MakeSpan(o));
      ASSERT_TRUE(st.ok()) << st.status();
      EXPECT_EQ(st->queries, kBlock);
      EXPECT_EQ(st->cached_pages, first / kPage);
      EXPECT_EQ(st->reused_head_pages, first / kPage * kKv);
      EXPECT_EQ(st->attended_head_pages, (first / kPage + kBlockPages) * kKv);
      EXPECT_FALSE(st->selected);
      // Every query sees the prompt, the clean blocks and the WHOLE noisy block (bidirectional).
      const auto rows = AllPages(first / kPage + kBlockPages);
      EXPECT_EQ(session.last_rows(), rows);
      ExpectClose(o, Reference(seq, q, rows),
                  "block " + std::to_string(b) + " step " + std::to_string(i));
    }
    auto c = session.CommitBlock(BlockIds(seq, first));
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(session.cached_tokens(), first + kBlock);
  }
  // The keys are the chained keys of the final token ids: the same as a prefix lookup computes.
  const auto keys = ChainPageKeys(seq.ids, kPage, PageKeyExtra{DenseOptions().model_id, 0, {}});
  EXPECT_EQ(session.page_keys(), keys);
}

TEST(DiffusionSessionTest, PromptAndCleanBlocksAreWrittenOnceAcrossDenoisingSteps) {
  TempDir dir;
  auto store = OpenStore(dir.path(), 256);
  const int64_t prompt = 16, blocks = 4;
  const int steps = 5;
  Sequence seq(prompt + blocks * kBlock, 2);
  auto s = DiffusionSession::Create(store.get(), MakeCpuWorkerBackend(), DenseOptions());
  ASSERT_TRUE(s.ok()) << s.status();
  DiffusionSession& session = **s;
  ASSERT_TRUE(Prefill(session, seq, prompt).ok());
  EXPECT_EQ(store->Stats().puts, static_cast<uint64_t>(prompt / kPage));
  uint64_t fetched = 0, committed = 0;
  for (int b = 0; b < blocks; ++b) {
    const int64_t first = prompt + b * kBlock;
    for (int i = 0; i < steps; ++i) {
      const uint64_t puts = store->Stats().puts;
      std::vector<uint16_t> bk, bv, o(kBlock * kQ * kDim);
      seq.Noisy(first, i, steps, &bk, &bv);
      auto st = session.Denoise(seq.Queries(), bk, bv, absl::MakeSpan(o));
      ASSERT_TRUE(st.ok()) << st.status();
      EXPECT_EQ(store->Stats().puts, puts) << "a denoising step wrote to the store";
      // The noisy block changes every step and is the only thing rewritten; the cached part is
      // read from the pool, not rewritten.
      EXPECT_EQ(st->rewritten_pages, kBlockPages);
      EXPECT_EQ(st->bytes_rewritten, kBlockPages * PageBytes());
      EXPECT_EQ(st->bytes_reused, static_cast<uint64_t>(first / kPage) * PageBytes());
      EXPECT_EQ(st->bytes_uploaded, st->bytes_rewritten + st->fetched_head_pages * HeadPageBytes());
      fetched += st->fetched_head_pages;
    }
    auto c = session.CommitBlock(BlockIds(seq, first));
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->pages, kBlockPages);
    EXPECT_EQ(c->reused_pages, 0);
    EXPECT_EQ(c->bytes_committed, kBlockPages * PageBytes());
    committed += c->bytes_committed;
  }
  // Each prompt page and each clean page went to the store exactly once, and into the pool once:
  // only the prompt was ever fetched (committed blocks stay resident in their slots).
  EXPECT_EQ(store->Stats().puts, static_cast<uint64_t>(prompt / kPage + blocks * kBlockPages));
  EXPECT_EQ(committed, blocks * kBlockPages * PageBytes());
  EXPECT_EQ(fetched, static_cast<uint64_t>(prompt / kPage * kKv));
  for (int64_t p = 0; p < seq.tokens / kPage; ++p) {
    std::vector<uint8_t> got(PageBytes());
    ASSERT_TRUE(store->Get("diffusion", session.page_keys()[p], absl::MakeSpan(got)).ok());
    EXPECT_EQ(got, seq.PageBytesOf(p)) << "page " << p;
  }
}

TEST(DiffusionSessionTest, OnlyChangedBlockPagesAreReuploaded) {
  TempDir dir;
  auto store = OpenStore(dir.path(), 256);
  const int64_t prompt = 8;
  Sequence seq(prompt + kBlock, 3);
  auto s = DiffusionSession::Create(store.get(), MakeCpuWorkerBackend(), DenseOptions());
  ASSERT_TRUE(s.ok()) << s.status();
  DiffusionSession& session = **s;
  ASSERT_TRUE(Prefill(session, seq, prompt).ok());
  std::vector<uint16_t> bk, bv, o(kBlock * kQ * kDim);
  seq.Noisy(prompt, 0, 2, &bk, &bv);
  const auto rows = AllPages(prompt / kPage + kBlockPages);

  auto st = session.Denoise(seq.Queries(), bk, bv, absl::MakeSpan(o));
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->rewritten_pages, kBlockPages);
  EXPECT_EQ(st->fetched_head_pages, prompt / kPage * kKv);

  // Same K/V again: nothing moves.
  std::vector<uint16_t> q = seq.Queries();
  st = session.Denoise(q, bk, bv, absl::MakeSpan(o));
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->rewritten_pages, 0);
  EXPECT_EQ(st->fetched_head_pages, 0);
  EXPECT_EQ(st->bytes_uploaded, 0u);
  ExpectClose(o, Reference(seq, q, rows), "unchanged");

  // One token of the block's second page unmasks (its K/V become the final ones): that page
  // alone is rewritten.
  const int64_t t = prompt + kPage + 1;
  for (int h = 0; h < kKv; ++h) {
    for (int d = 0; d < kDim; ++d) {
      const int64_t i = (h * seq.tokens + t) * kDim + d;
      seq.cur_k[i] = seq.k[i];
      seq.cur_v[i] = seq.v[i];
    }
  }
  bk = seq.Slice(seq.cur_k, prompt, kBlock);
  bv = seq.Slice(seq.cur_v, prompt, kBlock);
  q = seq.Queries();
  st = session.Denoise(q, bk, bv, absl::MakeSpan(o));
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->rewritten_pages, 1);
  EXPECT_EQ(st->bytes_rewritten, PageBytes());
  EXPECT_EQ(st->bytes_uploaded, PageBytes());
  ExpectClose(o, Reference(seq, q, rows), "one page changed");
}

TEST(DiffusionSessionTest, PagesSpilledToSsdReadBackByteExactAndServeAnotherSession) {
  TempDir dir;
  auto store = OpenStore(dir.path(), 4);  // a 4-page host tier: most pages go to SSD
  const int64_t prompt = 32, blocks = 3;
  Sequence seq(prompt + blocks * kBlock, 4);
  {
    auto s = DiffusionSession::Create(store.get(), MakeCpuWorkerBackend(), DenseOptions());
    ASSERT_TRUE(s.ok()) << s.status();
    ASSERT_TRUE(Prefill(**s, seq, prompt).ok());
    for (int b = 0; b < blocks; ++b) {
      const int64_t first = prompt + b * kBlock;
      for (int i = 0; i < 3; ++i) {
        std::vector<uint16_t> bk, bv, o(kBlock * kQ * kDim);
        seq.Noisy(first, i, 3, &bk, &bv);
        ASSERT_TRUE((*s)->Denoise(seq.Queries(), bk, bv, absl::MakeSpan(o)).ok());
      }
      ASSERT_TRUE((*s)->CommitBlock(BlockIds(seq, first)).ok());
    }
  }
  const auto keys = ChainPageKeys(seq.ids, kPage, PageKeyExtra{DenseOptions().model_id, 0, {}});
  ASSERT_EQ(keys.size(), static_cast<size_t>(seq.tokens / kPage));
  ASSERT_EQ(store->Demote("diffusion", keys, Tier::kSsd).status(), absl::OkStatus());
  for (size_t p = 0; p < keys.size(); ++p) {
    ASSERT_EQ(store->Stat("diffusion", keys[p])->tier, Tier::kSsd) << p;
    std::vector<uint8_t> got(PageBytes());
    auto info = store->Get("diffusion", keys[p], absl::MakeSpan(got));
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(got, seq.PageBytesOf(static_cast<int64_t>(p))) << "page " << p;
  }

  // A second session over the same prompt + clean blocks reuses every stored page (nothing is
  // rewritten) and its first step reads them from SSD; its output is still exact.
  ASSERT_EQ(store->Demote("diffusion", keys, Tier::kSsd).status(), absl::OkStatus());
  const uint64_t puts = store->Stats().puts;
  auto s = DiffusionSession::Create(store.get(), MakeCpuWorkerBackend(), DenseOptions());
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_TRUE(Prefill(**s, seq, prompt).ok());
  for (int b = 0; b + 1 < blocks; ++b) {
    const int64_t first = prompt + b * kBlock;
    std::vector<uint16_t> bk, bv, o(kBlock * kQ * kDim);
    seq.Noisy(first, 0, 1, &bk, &bv);  // final K/V
    auto st = (*s)->Denoise(seq.Queries(), bk, bv, absl::MakeSpan(o));
    ASSERT_TRUE(st.ok()) << st.status();
    if (b == 0) {  // the prompt comes from SSD
      EXPECT_EQ(st->bytes_from_tier[static_cast<int>(Tier::kSsd)], prompt / kPage * PageBytes());
    }
    auto c = (*s)->CommitBlock(BlockIds(seq, first));
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->reused_pages, kBlockPages);
    EXPECT_EQ(c->bytes_committed, 0u);
  }
  EXPECT_EQ(store->Stats().puts, puts);
  const int64_t first = prompt + (blocks - 1) * kBlock;
  std::vector<uint16_t> bk, bv, o(kBlock * kQ * kDim);
  seq.Noisy(first, 0, 2, &bk, &bv);
  const std::vector<uint16_t> q = seq.Queries();
  auto st = (*s)->Denoise(q, bk, bv, absl::MakeSpan(o));
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->fetched_head_pages, 0);  // all resident since the earlier steps
  ExpectClose(o, Reference(seq, q, AllPages(first / kPage + kBlockPages)), "second session");
}

TEST(DiffusionSessionTest, SmallPoolRefetchesFromSsdAndStaysExact) {
  TempDir dir;
  auto store = OpenStore(dir.path(), 4);
  const int64_t prompt = 40;
  Sequence seq(prompt + kBlock, 5);
  DiffusionSessionOptions opt = DenseOptions(prompt / kPage + kBlockPages);  // exactly one step
  auto s = DiffusionSession::Create(store.get(), MakeCpuWorkerBackend(), opt);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_TRUE(Prefill(**s, seq, prompt).ok());
  std::vector<uint16_t> bk, bv, o(kBlock * kQ * kDim);
  seq.Noisy(prompt, 0, 2, &bk, &bv);
  const std::vector<uint16_t> q = seq.Queries();
  auto st = (*s)->Denoise(q, bk, bv, absl::MakeSpan(o));
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->fetched_head_pages, prompt / kPage * kKv);
  EXPECT_GT(st->bytes_from_tier[static_cast<int>(Tier::kSsd)], 0u);
  EXPECT_EQ(st->bytes_from_tier[static_cast<int>(Tier::kSsd)] +
                st->bytes_from_tier[static_cast<int>(Tier::kHost)],
            prompt / kPage * PageBytes());
  ExpectClose(o, Reference(seq, q, AllPages(prompt / kPage + kBlockPages)), "ssd");
}

TEST(DiffusionSessionTest, SparseStepsAttendTheSelectedPagesAndTheWholeBlock) {
  TempDir dir;
  auto store = OpenStore(dir.path(), 8);
  const int64_t prompt = 48, blocks = 3;
  const int steps = 3;
  Sequence seq(prompt + blocks * kBlock, 6);
  DiffusionSessionOptions opt = DenseOptions(16);
  opt.sparse = true;
  opt.policy = retriever::Policy::kQuest;
  opt.selector.budget_tokens = 4 * kPage;
  opt.selector.sink_pages = 1;
  opt.selector.window_pages = 1;
  auto s = DiffusionSession::Create(store.get(), MakeCpuWorkerBackend(), opt);
  ASSERT_TRUE(s.ok()) << s.status();
  DiffusionSession& session = **s;
  ASSERT_TRUE(Prefill(session, seq, prompt).ok());
  for (int b = 0; b < blocks; ++b) {
    const int64_t first = prompt + b * kBlock;
    const int32_t cached = static_cast<int32_t>(first / kPage);
    for (int i = 0; i < steps; ++i) {
      std::vector<uint16_t> bk, bv, o(kBlock * kQ * kDim);
      seq.Noisy(first, i, steps, &bk, &bv);
      const std::vector<uint16_t> q = seq.Queries();
      auto st = session.Denoise(q, bk, bv, absl::MakeSpan(o));
      ASSERT_TRUE(st.ok()) << st.status();
      EXPECT_TRUE(st->selected);
      const auto& rows = session.last_rows();
      ASSERT_EQ(rows.size(), static_cast<size_t>(kKv));
      for (const auto& row : rows) {
        // At most the budget of cached pages (sink and window included), then the whole block.
        ASSERT_LE(row.size(), 4u + kBlockPages);
        ASSERT_GE(row.size(), 1u + kBlockPages);
        for (int32_t j = 0; j < kBlockPages; ++j) {
          EXPECT_EQ(row[row.size() - kBlockPages + j], cached + j);
        }
        EXPECT_EQ(row.front(), 0);                                 // the sink page
        EXPECT_EQ(row[row.size() - kBlockPages - 1], cached - 1);  // the window page
      }
      EXPECT_LT(st->reused_head_pages, cached * kKv);
      ExpectClose(o, Reference(seq, q, rows),
                  "block " + std::to_string(b) + " step " + std::to_string(i));
    }
    ASSERT_TRUE(session.CommitBlock(BlockIds(seq, first)).ok());
  }
  // The selector sees committed blocks: a reopen rebuilds it without the block, and the next step
  // still selects within the cached part.
  ASSERT_TRUE(session.ReopenBlock().ok());
  const int64_t first = prompt + (blocks - 1) * kBlock;
  std::vector<uint16_t> bk, bv, o(kBlock * kQ * kDim);
  seq.Noisy(first, 0, 2, &bk, &bv);
  const std::vector<uint16_t> q = seq.Queries();
  auto st = session.Denoise(q, bk, bv, absl::MakeSpan(o));
  ASSERT_TRUE(st.ok()) << st.status();
  for (const auto& row : session.last_rows()) {
    EXPECT_EQ(row.back(), first / kPage + kBlockPages - 1);
  }
  ExpectClose(o, Reference(seq, q, session.last_rows()), "after reopen");
}

TEST(DiffusionSessionTest, ReopenedBlockInvalidatesOnlyItsOwnPages) {
  TempDir dir;
  auto store = OpenStore(dir.path(), 256);
  const int64_t prompt = 8;
  Sequence seq(prompt + 2 * kBlock, 7);
  auto s = DiffusionSession::Create(store.get(), MakeCpuWorkerBackend(), DenseOptions());
  ASSERT_TRUE(s.ok()) << s.status();
  DiffusionSession& session = **s;
  ASSERT_TRUE(Prefill(session, seq, prompt).ok());
  std::vector<uint16_t> bk, bv, o(kBlock * kQ * kDim);
  for (int b = 0; b < 2; ++b) {
    seq.Noisy(prompt + b * kBlock, 0, 1, &bk, &bv);
    ASSERT_TRUE(session.Denoise(seq.Queries(), bk, bv, absl::MakeSpan(o)).ok());
    ASSERT_TRUE(session.CommitBlock(BlockIds(seq, prompt + b * kBlock)).ok());
  }
  const std::vector<PageKey> before = session.page_keys();
  const uint64_t puts = store->Stats().puts;

  ASSERT_TRUE(session.ReopenBlock().ok());
  EXPECT_TRUE(session.block_open());
  EXPECT_EQ(session.cached_tokens(), prompt + kBlock);
  const size_t kept = (prompt + kBlock) / kPage;
  for (size_t p = 0; p < before.size(); ++p) {
    EXPECT_EQ(store->Exists("diffusion", before[p]), p < kept) << "page " << p;
  }
  EXPECT_EQ(absl::FailedPreconditionError("").code(), session.ReopenBlock().code());

  // The reopened block has no K/V in the worker until a step writes them.
  EXPECT_EQ(session.CommitBlock(BlockIds(seq, prompt + kBlock)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // Its first step writes every block page; the kept pages are still resident (nothing fetched).
  std::vector<uint16_t> q = seq.Queries();
  auto st = session.Denoise(q, bk, bv, absl::MakeSpan(o));
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->rewritten_pages, kBlockPages);
  EXPECT_EQ(st->fetched_head_pages, 0);
  EXPECT_EQ(st->bytes_uploaded, kBlockPages * PageBytes());
  // Remasked: the first page of the block changes, the second does not.
  const int64_t first = prompt + kBlock;
  for (int h = 0; h < kKv; ++h) {
    for (int64_t t = first; t < first + kPage; ++t) {
      for (int d = 0; d < kDim; ++d) {
        const int64_t i = (h * seq.tokens + t) * kDim + d;
        seq.k[i] = seq.cur_k[i] = Half(kernels::HalfToFloat(seq.k[i]) + 0.25f);
      }
    }
  }
  bk = seq.Slice(seq.cur_k, first, kBlock);
  q = seq.Queries();
  st = session.Denoise(q, bk, bv, absl::MakeSpan(o));
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->rewritten_pages, 1);
  ExpectClose(o, Reference(seq, q, AllPages(first / kPage + kBlockPages)), "remasked");
  seq.ids[first] += 1;  // a different token: a different chain from here on
  auto c = session.CommitBlock(BlockIds(seq, first));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->bytes_committed, kBlockPages * PageBytes());
  EXPECT_EQ(store->Stats().puts, puts + kBlockPages);
  const auto& after = session.page_keys();
  ASSERT_EQ(after.size(), before.size());
  for (size_t p = 0; p < after.size(); ++p) {
    EXPECT_EQ(after[p] == before[p], p < kept) << "page " << p;
    EXPECT_TRUE(store->Exists("diffusion", after[p]));
    std::vector<uint8_t> got(PageBytes());
    ASSERT_TRUE(store->Get("diffusion", after[p], absl::MakeSpan(got)).ok());
    EXPECT_EQ(got, seq.PageBytesOf(static_cast<int64_t>(p))) << "page " << p;
  }
}

TEST(DiffusionSessionTest, ABlockRecommittedUnderItsOldKeysIsAttendedWithItsNewBytes) {
  // Remasking may change a block's K/V but not its final token ids: the same chained keys then
  // name new bytes. The old copies must be gone from the store and the pool, never attended.
  TempDir dir;
  auto store = OpenStore(dir.path(), 256);
  const int64_t prompt = 8, first = prompt;
  Sequence seq(prompt + 2 * kBlock, 11);
  auto s = DiffusionSession::Create(store.get(), MakeCpuWorkerBackend(), DenseOptions());
  ASSERT_TRUE(s.ok()) << s.status();
  DiffusionSession& session = **s;
  ASSERT_TRUE(Prefill(session, seq, prompt).ok());
  std::vector<uint16_t> bk, bv, o(kBlock * kQ * kDim);
  seq.Noisy(first, 0, 1, &bk, &bv);
  ASSERT_TRUE(session.Denoise(seq.Queries(), bk, bv, absl::MakeSpan(o)).ok());
  ASSERT_TRUE(session.CommitBlock(BlockIds(seq, first)).ok());
  const std::vector<PageKey> old_keys = session.page_keys();
  ASSERT_TRUE(session.ReopenBlock().ok());
  for (int h = 0; h < kKv; ++h) {  // the block's final K/V change; its token ids do not
    for (int64_t t = first; t < first + kBlock; ++t) {
      for (int d = 0; d < kDim; ++d) {
        const int64_t i = (h * seq.tokens + t) * kDim + d;
        seq.k[i] = seq.cur_k[i] = Half(kernels::HalfToFloat(seq.k[i]) - 0.5f);
        seq.v[i] = seq.cur_v[i] = Half(kernels::HalfToFloat(seq.v[i]) + 0.5f);
      }
    }
  }
  bk = seq.Slice(seq.cur_k, first, kBlock);
  bv = seq.Slice(seq.cur_v, first, kBlock);
  ASSERT_TRUE(session.Denoise(seq.Queries(), bk, bv, absl::MakeSpan(o)).ok());
  auto c = session.CommitBlock(BlockIds(seq, first));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->reused_pages, 0);  // the old pages were removed: these are written afresh
  ASSERT_EQ(session.page_keys(), old_keys);
  for (size_t p = 0; p < old_keys.size(); ++p) {
    std::vector<uint8_t> got(PageBytes());
    ASSERT_TRUE(store->Get("diffusion", old_keys[p], absl::MakeSpan(got)).ok());
    EXPECT_EQ(got, seq.PageBytesOf(static_cast<int64_t>(p))) << "page " << p;
  }
  // The next block attends the recommitted pages with their new bytes.
  seq.Noisy(first + kBlock, 0, 2, &bk, &bv);
  const std::vector<uint16_t> q = seq.Queries();
  auto st = session.Denoise(q, bk, bv, absl::MakeSpan(o));
  ASSERT_TRUE(st.ok()) << st.status();
  ExpectClose(o, Reference(seq, q, AllPages((first + 2 * kBlock) / kPage)), "recommitted");
}

TEST(DiffusionSessionTest, ACommitPastMaxPagesIsRefusedAndChangesNothing) {
  TempDir dir;
  auto store = OpenStore(dir.path(), 256);
  const int64_t prompt = 8;
  Sequence seq(prompt + 2 * kBlock, 12);
  DiffusionSessionOptions o = DenseOptions();
  o.max_pages = prompt / kPage + kBlockPages;  // the prompt and one block
  auto s = DiffusionSession::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(s.ok()) << s.status();
  DiffusionSession& session = **s;
  ASSERT_TRUE(Prefill(session, seq, prompt).ok());
  std::vector<uint16_t> bk, bv, o1(kBlock * kQ * kDim);
  seq.Noisy(prompt, 0, 1, &bk, &bv);
  ASSERT_TRUE(session.Denoise(seq.Queries(), bk, bv, absl::MakeSpan(o1)).ok());
  ASSERT_TRUE(session.CommitBlock(BlockIds(seq, prompt)).ok());
  seq.Noisy(prompt + kBlock, 0, 1, &bk, &bv);
  const std::vector<uint16_t> q = seq.Queries();
  ASSERT_TRUE(session.Denoise(q, bk, bv, absl::MakeSpan(o1)).ok());
  const uint64_t puts = store->Stats().puts;
  EXPECT_EQ(session.CommitBlock(BlockIds(seq, prompt + kBlock)).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(session.block_open());
  EXPECT_EQ(session.cached_tokens(), prompt + kBlock);
  EXPECT_EQ(store->Stats().puts, puts);
  // Still dense over every cached page and the block, still usable.
  std::vector<uint16_t> o2(o1.size());
  ASSERT_TRUE(session.Denoise(q, bk, bv, absl::MakeSpan(o2)).ok());
  ExpectClose(o2, Reference(seq, q, AllPages(prompt / kPage + 2 * kBlockPages)), "at max_pages");
}

TEST(DiffusionSessionTest, BadOptionsAreRefused) {
  TempDir dir;
  auto store = OpenStore(dir.path(), 16);
  DiffusionSessionOptions o = DenseOptions();
  o.block_tokens = 6;  // not a multiple of the 4-token page
  EXPECT_EQ(DiffusionSession::Create(store.get(), MakeCpuWorkerBackend(), o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o.block_tokens = 0;
  EXPECT_EQ(DiffusionSession::Create(store.get(), MakeCpuWorkerBackend(), o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = DenseOptions(kBlockPages);  // no room for a cached page
  EXPECT_EQ(DiffusionSession::Create(store.get(), MakeCpuWorkerBackend(), o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = DenseOptions(5);
  o.sparse = true;
  o.selector.budget_tokens = 4 * kPage;  // 4 budget pages + a 2-page block > 5 slots per head
  EXPECT_EQ(DiffusionSession::Create(store.get(), MakeCpuWorkerBackend(), o).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      DiffusionSession::Create(nullptr, MakeCpuWorkerBackend(), DenseOptions()).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->Stats().puts, 0u);
}

TEST(DiffusionSessionTest, BadInputGetsAClearErrorAndChangesNothing) {
  TempDir dir;
  auto store = OpenStore(dir.path(), 256);
  const int64_t prompt = 8;
  Sequence seq(prompt + kBlock, 8);
  auto s = DiffusionSession::Create(store.get(), MakeCpuWorkerBackend(), DenseOptions());
  ASSERT_TRUE(s.ok()) << s.status();
  DiffusionSession& session = **s;
  std::vector<uint16_t> bk, bv, o(kBlock * kQ * kDim, 0x1234);
  seq.Noisy(prompt, 0, 1, &bk, &bv);
  std::vector<uint16_t> q = seq.Queries();
  const std::vector<uint16_t> untouched = o;

  // Before Prefill.
  EXPECT_EQ(session.Denoise(q, bk, bv, absl::MakeSpan(o)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(session.CommitBlock(BlockIds(seq, prompt)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // Bad prompts: not a whole number of pages, wrong sizes, non-finite.
  EXPECT_EQ(session
                .Prefill(absl::MakeConstSpan(seq.ids).subspan(0, 6), seq.Slice(seq.k, 0, 6),
                         seq.Slice(seq.v, 0, 6))
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(session
                .Prefill(absl::MakeConstSpan(seq.ids).subspan(0, prompt),
                         seq.Slice(seq.k, 0, prompt - kPage), seq.Slice(seq.v, 0, prompt))
                .code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<uint16_t> bad = seq.Slice(seq.v, 0, prompt);
  bad[5] = 0x7c00;  // +inf
  EXPECT_EQ(session
                .Prefill(absl::MakeConstSpan(seq.ids).subspan(0, prompt),
                         seq.Slice(seq.k, 0, prompt), bad)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->Stats().puts, 0u);
  EXPECT_EQ(session.cached_pages(), 0);

  ASSERT_TRUE(Prefill(session, seq, prompt).ok());
  EXPECT_EQ(Prefill(session, seq, prompt).code(), absl::StatusCode::kFailedPrecondition);
  const uint64_t puts = store->Stats().puts;
  EXPECT_EQ(puts, static_cast<uint64_t>(prompt / kPage));
  // Nothing denoised yet: no block to commit or reopen.
  EXPECT_EQ(session.CommitBlock(BlockIds(seq, prompt)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(session.ReopenBlock().code(), absl::StatusCode::kFailedPrecondition);

  // Bad steps: wrong q / out / k / v sizes, non-finite q and k.
  std::vector<uint16_t> short_q(q.begin(), q.end() - 1), short_k(bk.begin(), bk.end() - 1);
  EXPECT_EQ(session.Denoise(short_q, bk, bv, absl::MakeSpan(o)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(session.Denoise(q, short_k, bv, absl::MakeSpan(o)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(session.Denoise(q, bk, short_k, absl::MakeSpan(o)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(session.Denoise(q, bk, bv, absl::MakeSpan(o).subspan(1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<uint16_t> nan_q = q;
  nan_q[17] = 0x7e00;
  EXPECT_EQ(session.Denoise(nan_q, bk, bv, absl::MakeSpan(o)).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<uint16_t> inf_k = bk;
  inf_k[3] = 0xfc00;  // -inf
  EXPECT_EQ(session.Denoise(q, inf_k, bv, absl::MakeSpan(o)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(o, untouched);
  EXPECT_FALSE(session.block_open());
  EXPECT_EQ(session.CommitBlock(BlockIds(seq, prompt)).status().code(),
            absl::StatusCode::kFailedPrecondition);

  // A good step after all that: exact output, the whole block uploaded, nothing written.
  auto st = session.Denoise(q, bk, bv, absl::MakeSpan(o));
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->rewritten_pages, kBlockPages);
  ExpectClose(o, Reference(seq, q, AllPages(prompt / kPage + kBlockPages)), "after bad input");
  // Commit with the wrong number of ids, or reopen while open: refused, the block stays open.
  EXPECT_EQ(
      session.CommitBlock(absl::MakeConstSpan(seq.ids).subspan(prompt, kBlock - 1)).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(session.ReopenBlock().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(session.block_open());
  EXPECT_EQ(store->Stats().puts, puts);
  auto c = session.CommitBlock(BlockIds(seq, prompt));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(store->Stats().puts, puts + kBlockPages);
  EXPECT_EQ(session.page_keys(),
            ChainPageKeys(seq.ids, kPage, PageKeyExtra{DenseOptions().model_id, 0, {}}));
}

TEST(DiffusionSessionTest, AStepLargerThanThePoolIsRefusedAndChangesNothing) {
  TempDir dir;
  auto store = OpenStore(dir.path(), 256);
  const int64_t prompt = 8;
  Sequence seq(prompt + 2 * kBlock, 9);
  // Room for the prompt and one block: the second block's step needs 6 pages.
  auto s = DiffusionSession::Create(store.get(), MakeCpuWorkerBackend(),
                                    DenseOptions(prompt / kPage + kBlockPages));
  ASSERT_TRUE(s.ok()) << s.status();
  DiffusionSession& session = **s;
  ASSERT_TRUE(Prefill(session, seq, prompt).ok());
  std::vector<uint16_t> bk, bv, o(kBlock * kQ * kDim);
  seq.Noisy(prompt, 0, 1, &bk, &bv);
  ASSERT_TRUE(session.Denoise(seq.Queries(), bk, bv, absl::MakeSpan(o)).ok());
  ASSERT_TRUE(session.CommitBlock(BlockIds(seq, prompt)).ok());
  seq.Noisy(prompt + kBlock, 0, 1, &bk, &bv);
  const std::vector<uint16_t> q = seq.Queries();
  const auto rows = session.last_rows();
  EXPECT_EQ(session.Denoise(q, bk, bv, absl::MakeSpan(o)).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_FALSE(session.block_open());
  EXPECT_EQ(session.last_rows(), rows);
  // Still usable: the committed block can be reopened and re-denoised (its pages written again,
  // the prompt's still resident).
  ASSERT_TRUE(session.ReopenBlock().ok());
  seq.Noisy(prompt, 0, 1, &bk, &bv);
  auto st = session.Denoise(q, bk, bv, absl::MakeSpan(o));
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->bytes_uploaded, kBlockPages * PageBytes());
  // cur_k / cur_v hold the second block's K/V too, but the reference reads only pages 0..3.
  ExpectClose(o, Reference(seq, q, AllPages(prompt / kPage + kBlockPages)), "after refusal");
}

TEST(DiffusionSessionTest, ACorruptedHostPageIsNeverAttended) {
  TempDir dir;
  auto store = OpenStore(dir.path(), 256);
  const int64_t prompt = 16;
  Sequence seq(prompt + kBlock, 13);
  auto s = DiffusionSession::Create(store.get(), MakeCpuWorkerBackend(), DenseOptions());
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_TRUE(Prefill(**s, seq, prompt).ok());
  // Flip one byte of page 2's V (head 1) where it sits in the host arena: the verified gather
  // flags that head, and the store read behind it finds the page's checksum broken.
  auto lease = store->AcquireRead("diffusion", (*s)->page_keys()[2]);
  ASSERT_TRUE(lease.ok()) << lease.status();
  ASSERT_TRUE(store->ReleaseRead(lease->lease_id).ok());
  const uint64_t v1 = (kKv + 1) * kPage * kDim * 2;
  store->HostArenaInfo().base[lease->arena_offset + v1 + 10] ^= 0x40;

  std::vector<uint16_t> bk, bv, o(kBlock * kQ * kDim, 0xBEEF);
  seq.Noisy(prompt, 0, 2, &bk, &bv);
  const std::vector<uint16_t> q = seq.Queries();
  auto st = (*s)->Denoise(q, bk, bv, absl::MakeSpan(o));
  EXPECT_TRUE(absl::IsDataLoss(st.status())) << st.status();
  for (uint16_t x : o) ASSERT_EQ(x, 0xBEEF);  // nothing computed from wrong bytes
  EXPECT_EQ(store->Stats().checksum_failures, 1u);
  // The session stays failed rather than attend a sequence with a hole in it.
  EXPECT_TRUE(absl::IsFailedPrecondition((*s)->Denoise(q, bk, bv, absl::MakeSpan(o)).status()));
}

TEST(DiffusionSessionTest, HostPagesAreGatheredAndCountedOnce) {
  TempDir dir;
  auto store = OpenStore(dir.path(), 256);
  const int64_t prompt = 24;
  Sequence seq(prompt + kBlock, 14);
  auto s = DiffusionSession::Create(store.get(), MakeCpuWorkerBackend(), DenseOptions());
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_TRUE(Prefill(**s, seq, prompt).ok());
  const uint64_t hits = store->Stats().tiers[static_cast<int>(Tier::kHost)].hits;
  std::vector<uint16_t> bk, bv, o(kBlock * kQ * kDim);
  seq.Noisy(prompt, 0, 1, &bk, &bv);
  const std::vector<uint16_t> q = seq.Queries();
  auto st = (*s)->Denoise(q, bk, bv, absl::MakeSpan(o));
  ASSERT_TRUE(st.ok()) << st.status();
  // Every prompt page came through the gather from the host arena, read where the session's
  // prefill wrote it: no lease (the store counts no hit) and no store read behind it.
  EXPECT_EQ(st->fetched_head_pages, prompt / kPage * kKv);
  EXPECT_EQ(st->bytes_from_tier[static_cast<int>(Tier::kHost)], prompt / kPage * PageBytes());
  EXPECT_EQ(st->bytes_from_tier[static_cast<int>(Tier::kSsd)], 0u);
  EXPECT_EQ(store->Stats().tiers[static_cast<int>(Tier::kHost)].hits, hits);
  ExpectClose(o, Reference(seq, q, AllPages(prompt / kPage + kBlockPages)), "gathered");
}

TEST(DiffusionSessionTest, ADeviceBackendIsRefused) {
  auto cuda = MakeCudaWorkerBackend();
  if (!cuda.ok()) GTEST_SKIP() << "no CUDA worker backend here: " << cuda.status();
  TempDir dir;
  auto store = OpenStore(dir.path(), 16);
  EXPECT_EQ(DiffusionSession::Create(store.get(), std::move(*cuda), DenseOptions()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace pagoda
