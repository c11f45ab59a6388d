// DecodeSession over a real embedded Store (host + SSD tiers, RocksDB) with the CPU backend.
#include "pagoda/client/decode_session.h"

#include <stdlib.h>

#include <cmath>
#include <cstring>
#include <filesystem>
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

// One page per segment: small host tiers (4-6 pages) move pages to SSD one at a time.
std::unique_ptr<Store> OpenStore(const std::string& dir, uint64_t host_pages) {
  return worker_test::OpenStore(dir, host_pages, /*segment_pages=*/1);
}

// A synthetic sequence: K/V [kv, T, dim], queries drawn around a base that changes every
// `segment` steps (so the boundary trigger has something to find).
struct Sequence {
  int64_t tokens = 0;
  std::vector<int32_t> ids;
  std::vector<float> k, v;  // [kv, T, dim], already rounded to fp16
  std::vector<uint16_t> k16, v16;

  Sequence(int64_t t, uint32_t seed) : tokens(t) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> n(0.f, 1.f);
    k.resize(kKv * t * kDim);
    v.resize(k.size());
    k16.resize(k.size());
    v16.resize(k.size());
    for (size_t i = 0; i < k.size(); ++i) {
      k16[i] = kernels::FloatToHalf(n(rng));
      v16[i] = kernels::FloatToHalf(n(rng));
      k[i] = kernels::HalfToFloat(k16[i]);
      v[i] = kernels::HalfToFloat(v16[i]);
    }
    for (int64_t i = 0; i < t; ++i) ids.push_back(static_cast<int32_t>(rng() % 1000));
  }
  // Rows of token t of K or V, [kv, dim].
  std::vector<uint16_t> At(const std::vector<uint16_t>& x, int64_t t) const {
    std::vector<uint16_t> out(kKv * kDim);
    for (int h = 0; h < kKv; ++h) {
      std::memcpy(&out[h * kDim], &x[(h * tokens + t) * kDim], kDim * 2);
    }
    return out;
  }
  // The prompt [kv, n, dim].
  std::vector<uint16_t> Prompt(const std::vector<uint16_t>& x, int64_t n) const {
    std::vector<uint16_t> out(kKv * n * kDim);
    for (int h = 0; h < kKv; ++h) {
      std::memcpy(&out[h * n * kDim], &x[h * tokens * kDim], n * kDim * 2);
    }
    return out;
  }
  // Store page p as the session must have written it.
  std::vector<uint8_t> PageBytes(int64_t p) const {
    std::vector<uint16_t> page(2 * kKv * kPage * kDim);
    for (int h = 0; h < kKv; ++h) {
      std::memcpy(&page[h * kPage * kDim], &k16[(h * tokens + p * kPage) * kDim], kPage * kDim * 2);
      std::memcpy(&page[(kKv + h) * kPage * kDim], &v16[(h * tokens + p * kPage) * kDim],
                  kPage * kDim * 2);
    }
    std::vector<uint8_t> bytes(page.size() * 2);
    std::memcpy(bytes.data(), page.data(), bytes.size());
    return bytes;
  }
};

std::vector<uint16_t> Query(std::mt19937& rng, const std::vector<float>& base, float noise) {
  std::normal_distribution<float> n(0.f, 1.f);
  std::vector<uint16_t> q(base.size());
  for (size_t i = 0; i < q.size(); ++i) q[i] = kernels::FloatToHalf(base[i] + noise * n(rng));
  return q;
}

// Float64 attention of every query head over the tokens of `rows` (natural pages; the context
// holds `visible` tokens).
std::vector<double> Reference(const Sequence& seq, const std::vector<uint16_t>& q,
                              const std::vector<std::vector<int32_t>>& rows, int64_t visible) {
  std::vector<double> out(kQ * kDim, 0.0);
  for (int hq = 0; hq < kQ; ++hq) {
    const int h = hq / (kQ / kKv);
    std::vector<int64_t> toks;
    for (int32_t p : rows[h]) {
      for (int64_t t = int64_t{p} * kPage; t < std::min<int64_t>((p + 1) * kPage, visible); ++t) {
        toks.push_back(t);
      }
    }
    std::vector<double> s(toks.size());
    double mx = -1e300;
    for (size_t i = 0; i < toks.size(); ++i) {
      double dot = 0;
      for (int d = 0; d < kDim; ++d) {
        dot +=
            kernels::HalfToFloat(q[hq * kDim + d]) * seq.k[(h * seq.tokens + toks[i]) * kDim + d];
      }
      s[i] = dot / std::sqrt(double{kDim});
      mx = std::max(mx, s[i]);
    }
    double sum = 0;
    for (double& x : s) sum += (x = std::exp(x - mx));
    for (size_t i = 0; i < toks.size(); ++i) {
      for (int d = 0; d < kDim; ++d) {
        out[hq * kDim + d] += s[i] / sum * seq.v[(h * seq.tokens + toks[i]) * kDim + d];
      }
    }
  }
  return out;
}

void ExpectClose(const std::vector<uint16_t>& o, const std::vector<double>& ref, int step) {
  for (size_t i = 0; i < o.size(); ++i) {
    const double got = kernels::HalfToFloat(o[i]);
    ASSERT_NEAR(got, ref[i], 3e-3 + 2e-3 * std::abs(ref[i])) << "step " << step << " elem " << i;
  }
}

DecodeSessionOptions QuestOptions() {
  DecodeSessionOptions o;
  o.layout = Layout();
  o.q_heads = kQ;
  o.policy = retriever::Policy::kQuest;
  o.selector.budget_tokens = 4 * kPage;
  o.selector.sink_pages = 1;
  o.selector.window_pages = 1;
  o.pool_pages = 12;  // 2 x 4 + 1 fits; 12 keeps a few pages resident across steps
  return o;
}

TEST(DecodeSessionTest, StepsEqualDenseAttentionOverTheSelectedPagesAndReadSsd) {
  TempDir dir;
  auto store = OpenStore(dir.path(), 6);  // most pages live on SSD
  const int64_t prompt = 50, steps = 40;
  Sequence seq(prompt + steps, 1);
  auto s = DecodeSession::Create(store.get(), MakeCpuWorkerBackend(), QuestOptions());
  ASSERT_TRUE(s.ok()) << s.status();
  DecodeSession& session = **s;
  absl::Status prefilled =
      session.Prefill(absl::MakeConstSpan(seq.ids).subspan(0, prompt), seq.Prompt(seq.k16, prompt),
                      seq.Prompt(seq.v16, prompt));
  ASSERT_TRUE(prefilled.ok()) << prefilled;
  std::mt19937 rng(7);
  std::normal_distribution<float> n(0.f, 1.f);
  std::vector<float> base(kQ * kDim);
  uint64_t from_ssd = 0, fetched = 0, reused = 0;
  for (int i = 0; i < steps; ++i) {
    if (i % 10 == 0) {
      for (float& b : base) b = 2.f * n(rng);  // a new "topic": the trigger must fire
    }
    const int64_t t = prompt + i;
    std::vector<uint16_t> q = Query(rng, base, 0.05f), o(kQ * kDim);
    auto st =
        session.Step(seq.ids[t], q, seq.At(seq.k16, t), seq.At(seq.v16, t), absl::MakeSpan(o));
    ASSERT_TRUE(st.ok()) << st.status();
    // Quest selects on the backend, whose trigger reads each query a step late (no sync): the
    // first step retrieves, and a new topic at step i retrieves at step i + 1.
    EXPECT_EQ(st->retrieved, i == 0 || (i > 1 && i % 10 == 1)) << i;
    reused += st->retrieved ? 0 : 1;
    from_ssd += st->bytes_from_tier[static_cast<int>(Tier::kSsd)];
    fetched += st->fetched_pages;
    // Every row: at most the budget of retrieved pages plus the sliding window, ending at the
    // open page; the output is exact attention over exactly those tokens.
    const auto& rows = session.last_rows();
    ASSERT_EQ(rows.size(), static_cast<size_t>(kKv));
    for (const auto& row : rows) {
      EXPECT_EQ(row.back(), t / kPage);
      EXPECT_LE(row.size(), 4u + 3u);
    }
    EXPECT_EQ(session.last_page_tokens(), t % kPage + 1);
    ExpectClose(o, Reference(seq, q, rows, t + 1), i);
  }
  EXPECT_GT(from_ssd, 0u);
  EXPECT_GT(fetched, 0u);
  EXPECT_EQ(reused, 36u);
  EXPECT_EQ(session.num_tokens(), prompt + steps);
}

TEST(DecodeSessionTest, CommittedPagesAreByteExactUnderChainedKeys) {
  TempDir dir;
  auto store = OpenStore(dir.path(), 4);
  const int64_t prompt = 13, steps = 23;  // a partial prompt page; pages close during decode
  Sequence seq(prompt + steps, 2);
  auto s = DecodeSession::Create(store.get(), MakeCpuWorkerBackend(), QuestOptions());
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_TRUE((*s)->Prefill(absl::MakeConstSpan(seq.ids).subspan(0, prompt),
                            seq.Prompt(seq.k16, prompt), seq.Prompt(seq.v16, prompt))
                  .ok());
  std::mt19937 rng(3);
  std::vector<float> base(kQ * kDim, 0.5f);
  uint64_t committed = 0;
  for (int64_t t = prompt; t < prompt + steps; ++t) {
    std::vector<uint16_t> o(kQ * kDim);
    auto st = (*s)->Step(seq.ids[t], Query(rng, base, 1.f), seq.At(seq.k16, t), seq.At(seq.v16, t),
                         absl::MakeSpan(o));
    ASSERT_TRUE(st.ok()) << st.status();
    committed += st->bytes_committed;
    EXPECT_EQ(st->bytes_committed, (t + 1) % kPage == 0 ? Layout().PageBytes() : 0u) << t;
  }
  const int64_t pages = (prompt + steps) / kPage;
  ASSERT_EQ((*s)->page_keys().size(), static_cast<size_t>(pages));
  EXPECT_EQ(committed, (pages - prompt / kPage) * Layout().PageBytes());
  const std::vector<PageKey> want = ChainPageKeys(seq.ids, kPage, PageKeyExtra{"model", 0, {}});
  for (int64_t p = 0; p < pages; ++p) {
    EXPECT_EQ((*s)->page_keys()[p], want[p]) << p;
    std::vector<uint8_t> got(Layout().PageBytes());
    auto info = store->Get("decode", want[p], absl::MakeSpan(got));
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(got, seq.PageBytes(p)) << "page " << p;
  }
  EXPECT_GT(store->Stats().tiers[static_cast<int>(Tier::kSsd)].pages, 0u);
}

TEST(DecodeSessionTest, ABudgetCoveringTheContextIsDenseAttention) {
  TempDir dir;
  auto store = OpenStore(dir.path(), 64);
  const int64_t prompt = 9, steps = 6;
  Sequence seq(prompt + steps, 4);
  DecodeSessionOptions o = QuestOptions();
  o.selector.budget_tokens = 8 * kPage;  // more than the context: every page is read
  o.pool_pages = 17;
  auto s = DecodeSession::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_TRUE((*s)->Prefill(absl::MakeConstSpan(seq.ids).subspan(0, prompt),
                            seq.Prompt(seq.k16, prompt), seq.Prompt(seq.v16, prompt))
                  .ok());
  std::mt19937 rng(5);
  std::vector<float> base(kQ * kDim, 0.f);
  for (int64_t t = prompt; t < prompt + steps; ++t) {
    std::vector<uint16_t> q = Query(rng, base, 1.f), out(kQ * kDim);
    ASSERT_TRUE(
        (*s)->Step(seq.ids[t], q, seq.At(seq.k16, t), seq.At(seq.v16, t), absl::MakeSpan(out))
            .ok());
    std::vector<std::vector<int32_t>> all(kKv);
    for (auto& row : all) {
      for (int32_t p = 0; p <= t / kPage; ++p) row.push_back(p);
    }
    EXPECT_EQ((*s)->last_rows(), all);
    ExpectClose(out, Reference(seq, q, all, t + 1), static_cast<int>(t));
  }
}

TEST(DecodeSessionTest, BadInputIsRejectedAndChangesNothing) {
  TempDir dir;
  auto store = OpenStore(dir.path(), 64);
  // Options.
  DecodeSessionOptions o = QuestOptions();
  o.pool_pages = 6;  // < budget 4 + window 1 + 2
  EXPECT_TRUE(absl::IsInvalidArgument(
      DecodeSession::Create(store.get(), MakeCpuWorkerBackend(), o).status()));
  o = QuestOptions();
  o.policy = retriever::Policy::kBoundary;  // louiskv runs through the worker
  EXPECT_TRUE(DecodeSession::Create(store.get(), MakeCpuWorkerBackend(), o).ok());
  o = QuestOptions();
  o.stream = StreamOptions{4, 1};  // stream mode needs the streaming policy
  EXPECT_TRUE(absl::IsInvalidArgument(
      DecodeSession::Create(store.get(), MakeCpuWorkerBackend(), o).status()));
  o = QuestOptions();
  o.q_heads = 3;
  EXPECT_TRUE(absl::IsInvalidArgument(
      DecodeSession::Create(store.get(), MakeCpuWorkerBackend(), o).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(
      DecodeSession::Create(nullptr, MakeCpuWorkerBackend(), QuestOptions()).status()));

  auto s = DecodeSession::Create(store.get(), MakeCpuWorkerBackend(), QuestOptions());
  ASSERT_TRUE(s.ok());
  DecodeSession& session = **s;
  const int64_t prompt = 20;
  Sequence seq(prompt + 2, 6);
  std::vector<uint16_t> q(kQ * kDim, kernels::FloatToHalf(0.1f)), out(kQ * kDim);
  std::vector<uint16_t> k = seq.At(seq.k16, prompt), v = seq.At(seq.v16, prompt);
  EXPECT_TRUE(absl::IsFailedPrecondition(session.Step(1, q, k, v, absl::MakeSpan(out)).status()));
  // Prompt: wrong sizes, non-finite values, empty.
  auto pk = seq.Prompt(seq.k16, prompt), pv = seq.Prompt(seq.v16, prompt);
  auto ids = absl::MakeConstSpan(seq.ids).subspan(0, prompt);
  EXPECT_TRUE(
      absl::IsInvalidArgument(session.Prefill(ids, absl::MakeConstSpan(pk).subspan(1), pv)));
  auto bad = pv;
  bad[5] = 0x7c00;  // +inf
  EXPECT_TRUE(absl::IsInvalidArgument(session.Prefill(ids, pk, bad)));
  EXPECT_TRUE(absl::IsInvalidArgument(session.Prefill({}, {}, {})));
  EXPECT_EQ(store->Stats().puts, 0u);
  ASSERT_TRUE(session.Prefill(ids, pk, pv).ok());
  EXPECT_EQ(store->Stats().puts, static_cast<uint64_t>(prompt / kPage));
  EXPECT_TRUE(absl::IsFailedPrecondition(session.Prefill(ids, pk, pv)));
  // Steps: wrong sizes and non-finite values leave the sequence as it was.
  EXPECT_TRUE(absl::IsInvalidArgument(
      session.Step(1, absl::MakeConstSpan(q).subspan(1), k, v, absl::MakeSpan(out)).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(
      session.Step(1, q, absl::MakeConstSpan(k).subspan(1), v, absl::MakeSpan(out)).status()));
  EXPECT_TRUE(
      absl::IsInvalidArgument(session.Step(1, q, k, v, absl::MakeSpan(out).subspan(1)).status()));
  auto nan_q = q;
  nan_q[3] = 0x7e00;
  EXPECT_TRUE(absl::IsInvalidArgument(session.Step(1, nan_q, k, v, absl::MakeSpan(out)).status()));
  auto inf_v = v;
  inf_v[0] = 0xfc00;
  EXPECT_TRUE(absl::IsInvalidArgument(session.Step(1, q, k, inf_v, absl::MakeSpan(out)).status()));
  EXPECT_EQ(session.num_tokens(), prompt);
  // A good step still sees exactly the prompt plus its own token.
  auto st = session.Step(seq.ids[prompt], q, k, v, absl::MakeSpan(out));
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(session.num_tokens(), prompt + 1);
  ExpectClose(out, Reference(seq, q, session.last_rows(), prompt + 1), 0);
}

TEST(DecodeSessionTest, ShortPromptLongOutputReadsGeneratedPagesBackFromSsd) {
  TempDir dir;
  auto store = OpenStore(dir.path(), 4);  // generated pages soon leave the host tier
  const int64_t prompt = 6, steps = 160;
  Sequence seq(prompt + steps, 13);
  DecodeSessionOptions o = QuestOptions();
  o.boundary_trigger = false;  // select every step
  o.pool_pages = 9;  // exactly one step: every selected page not used last step is fetched
  auto s = DecodeSession::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_TRUE((*s)->Prefill(absl::MakeConstSpan(seq.ids).subspan(0, prompt),
                            seq.Prompt(seq.k16, prompt), seq.Prompt(seq.v16, prompt))
                  .ok());
  std::mt19937 rng(21);
  std::normal_distribution<float> n(0.f, 1.f);
  std::vector<float> base(kQ * kDim);
  uint64_t from_ssd = 0;
  for (int64_t t = prompt; t < prompt + steps; ++t) {
    for (float& b : base) b = 2.f * n(rng);  // a fresh query direction every step
    std::vector<uint16_t> q = Query(rng, base, 0.f), out(kQ * kDim);
    auto st =
        (*s)->Step(seq.ids[t], q, seq.At(seq.k16, t), seq.At(seq.v16, t), absl::MakeSpan(out));
    ASSERT_TRUE(st.ok()) << st.status();
    from_ssd += st->bytes_from_tier[static_cast<int>(Tier::kSsd)];
    ExpectClose(out, Reference(seq, q, (*s)->last_rows(), t + 1), static_cast<int>(t));
  }
  // Pages generated during decode were committed, left for SSD and were attended from there (the
  // sink page 0 is attended every step, so it never leaves the pool).
  EXPECT_GT(from_ssd, 10 * Layout().PageBytes());
  EXPECT_EQ((*s)->page_keys().size(), static_cast<size_t>((prompt + steps) / kPage));
  EXPECT_GT(store->Stats().tiers[static_cast<int>(Tier::kSsd)].hits, 10u);
}

TEST(DecodeSessionTest, ACorruptStoredPageFailsTheStepAndIsNeverAttended) {
  TempDir dir;
  auto store = OpenStore(dir.path(), 64);  // every page stays in the host arena
  DecodeSessionOptions o = QuestOptions();
  o.selector.budget_tokens = 8 * kPage;  // dense: the first step reads every page
  o.pool_pages = 17;
  const int64_t prompt = 20;
  Sequence seq(prompt + 2, 12);
  // A writes the prompt's pages; B finds them in the store (read once and verified at Prefill),
  // so B's first step gathers them from the host arena.
  auto writer = DecodeSession::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)
                  ->Prefill(absl::MakeConstSpan(seq.ids).subspan(0, prompt),
                            seq.Prompt(seq.k16, prompt), seq.Prompt(seq.v16, prompt))
                  .ok());
  auto s = DecodeSession::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_TRUE((*s)->Prefill(absl::MakeConstSpan(seq.ids).subspan(0, prompt),
                            seq.Prompt(seq.k16, prompt), seq.Prompt(seq.v16, prompt))
                  .ok());
  // Flip one byte of page 2 where it sits in the host arena.
  auto lease = store->AcquireRead("decode", (*s)->page_keys()[2]);
  ASSERT_TRUE(lease.ok()) << lease.status();
  ASSERT_TRUE(store->ReleaseRead(lease->lease_id).ok());
  store->HostArenaInfo().base[lease->arena_offset + 100] ^= 0x40;

  std::vector<uint16_t> q(kQ * kDim, kernels::FloatToHalf(0.3f)), out(kQ * kDim, 0xBEEF);
  auto st = (*s)->Step(seq.ids[prompt], q, seq.At(seq.k16, prompt), seq.At(seq.v16, prompt),
                       absl::MakeSpan(out));
  EXPECT_TRUE(absl::IsDataLoss(st.status())) << st.status();
  for (uint16_t x : out) ASSERT_EQ(x, 0xBEEF);  // nothing computed from wrong bytes
  EXPECT_EQ(store->Stats().checksum_failures, 1u);
  // The session stays failed rather than attend a sequence with a hole in it.
  st = (*s)->Step(seq.ids[prompt + 1], q, seq.At(seq.k16, prompt + 1), seq.At(seq.v16, prompt + 1),
                  absl::MakeSpan(out));
  EXPECT_TRUE(absl::IsFailedPrecondition(st.status())) << st.status();
}

TEST(DecodeSessionTest, RollingWindowStreamKeepsPinnedPrefixSinksAndWindow) {
  TempDir dir;
  auto store = OpenStore(dir.path(), 64);
  DecodeSessionOptions o = QuestOptions();
  o.policy = retriever::Policy::kStreaming;
  o.selector.budget_tokens = 3 * kPage;  // the sink and two window pages
  o.selector.sink_pages = 1;
  o.selector.window_pages = 2;
  o.stream = StreamOptions{/*window_pages=*/2, /*sink_pages=*/1};
  o.pin_prefix = true;
  const int64_t prompt = 3 * kPage, steps = 40;
  Sequence seq(prompt + steps, 8);
  auto s = DecodeSession::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_TRUE((*s)->Prefill(absl::MakeConstSpan(seq.ids).subspan(0, prompt),
                            seq.Prompt(seq.k16, prompt), seq.Prompt(seq.v16, prompt))
                  .ok());
  std::mt19937 rng(9);
  std::vector<float> base(kQ * kDim, 0.f);
  for (int64_t t = prompt; t < prompt + steps; ++t) {
    std::vector<uint16_t> q = Query(rng, base, 1.f), out(kQ * kDim);
    auto st =
        (*s)->Step(seq.ids[t], q, seq.At(seq.k16, t), seq.At(seq.v16, t), absl::MakeSpan(out));
    ASSERT_TRUE(st.ok()) << st.status();
    // The pinned prompt pages (0..2) and the window (the open page and the one before).
    const int32_t cur = static_cast<int32_t>(t / kPage);
    std::vector<int32_t> want{0, 1, 2};
    for (int32_t p = std::max(3, cur - 1); p <= cur; ++p) want.push_back(p);
    for (const auto& row : (*s)->last_rows()) EXPECT_EQ(row, want) << t;
    ExpectClose(out, Reference(seq, q, (*s)->last_rows(), t + 1), static_cast<int>(t));
  }
  // Pages that left the window left the store; the pinned prefix and the window stayed.
  const auto& keys = (*s)->page_keys();
  const int64_t pages = static_cast<int64_t>(keys.size());
  ASSERT_EQ(pages, (prompt + steps) / kPage);
  for (int64_t p = 0; p < pages; ++p) {
    const bool kept = p < 3 || p >= pages - 2;
    EXPECT_EQ(store->Exists("decode", keys[p]), kept) << p;
  }
  EXPECT_GT(store->Stats().window_dropped, 0u);
}

}  // namespace
}  // namespace pagoda
