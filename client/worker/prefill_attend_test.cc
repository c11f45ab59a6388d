// DecodeWorker::PrefillAttend over a real embedded Store (host + SSD tiers, RocksDB) with the CPU
// backend: the chunk's causal attention over the cached prefix, earlier chunks and itself,
// checked against exact attention computed from the token ids (K, V and q are functions of
// layer, position and token id, so a page holding other tokens than its row claims cannot pass).
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "pagoda/client/decode_worker.h"
#include "pagoda/kernels/dtype.h"
#include "pagoda/kvstore/prefix.h"
#include "worker_test_util.h"

namespace pagoda {
namespace {

using worker_test::D;
using worker_test::kDim;
using worker_test::kKv;
using worker_test::kLayers;
using worker_test::kPage;
using worker_test::kQ;
using worker_test::kTol;
using worker_test::Layout;
using worker_test::OpenStore;
using worker_test::Prompt;
using worker_test::TempDir;
using worker_test::Value;

DecodeWorkerOptions Options(int32_t slots) {
  DecodeWorkerOptions o;
  o.tenant = "t";
  o.layout = Layout();
  o.q_heads = kQ;
  o.num_layers = kLayers;
  o.policy = retriever::Policy::kQuest;
  o.selector.budget_tokens = 4096;
  o.pool_slots_per_head = slots;
  return o;
}

// K or V (which = 0 / 1) or q (which = 2) of (layer, position, token) for head h, dim d.
uint16_t X(int which, int layer, int64_t pos, int32_t tok, int h, int d) {
  const float scale = which == 2 ? 2.5f : 1.f;
  return kernels::FloatToHalf(scale * Value(which * 1000 + layer, static_cast<uint64_t>(pos),
                                            static_cast<uint64_t>(tok),
                                            static_cast<uint64_t>(h * kDim + d)));
}

// [n, heads, kDim] of positions [from, from + n).
std::vector<uint16_t> Rows(int which, int layer, const std::vector<int32_t>& toks, int64_t from,
                           int64_t n) {
  const int heads = which == 2 ? kQ : kKv;
  std::vector<uint16_t> out;
  for (int64_t t = from; t < from + n; ++t) {
    for (int h = 0; h < heads; ++h) {
      for (int d = 0; d < kDim; ++d) out.push_back(X(which, layer, t, toks[t], h, d));
    }
  }
  return out;
}

// Exact attention of the query at position t (query head qh) over the keys `keep` allows.
template <typename Keep>
std::vector<double> Attention(int layer, const std::vector<int32_t>& toks, int64_t t, int qh,
                              Keep keep) {
  const int kvh = qh / (kQ / kKv);
  std::vector<double> logits, o(kDim, 0);
  std::vector<int64_t> pos;
  double m = -1e300;
  for (int64_t j = 0; j <= t; ++j) {
    if (!keep(j)) continue;
    double dot = 0;
    for (int d = 0; d < kDim; ++d) {
      dot += D(X(2, layer, t, toks[t], qh, d)) * D(X(0, layer, j, toks[j], kvh, d));
    }
    pos.push_back(j);
    logits.push_back(dot / std::sqrt(double{kDim}));
    m = std::max(m, logits.back());
  }
  double sum = 0;
  for (size_t i = 0; i < pos.size(); ++i) {
    const double w = std::exp(logits[i] - m);
    sum += w;
    for (int d = 0; d < kDim; ++d) o[d] += w * D(X(1, layer, pos[i], toks[pos[i]], kvh, d));
  }
  for (double& x : o) x /= sum;
  return o;
}

struct Chunk {
  std::vector<uint16_t> q, k, v, o;
  TensorView Q() { return TensorView::Contiguous(q.data(), DType::kFp16, {Rows(), kQ, kDim}); }
  TensorView K() { return TensorView::Contiguous(k.data(), DType::kFp16, {Rows(), kKv, kDim}); }
  TensorView V() { return TensorView::Contiguous(v.data(), DType::kFp16, {Rows(), kKv, kDim}); }
  TensorView O() { return TensorView::Contiguous(o.data(), DType::kFp16, {Rows(), kQ, kDim}); }
  int64_t Rows() const { return static_cast<int64_t>(k.size()) / (kKv * kDim); }
};

Chunk MakeChunk(int layer, const std::vector<int32_t>& toks, int64_t from, int64_t n) {
  Chunk c{pagoda::Rows(2, layer, toks, from, n),
          pagoda::Rows(0, layer, toks, from, n),
          pagoda::Rows(1, layer, toks, from, n),
          {}};
  c.o.assign(c.q.size(), 0xffff);  // NaN: every element must be written
  return c;
}

// Max abs error of a chunk's output (queries at positions [from, from + rows)) against exact
// attention; `streaming_head(layer, kv head)` heads keep sink + window keys only.
template <typename Streaming>
double ChunkError(int layer, const std::vector<int32_t>& toks, int64_t from, const Chunk& c,
                  Streaming streaming_head, int64_t sink = 0, int64_t window = 0) {
  double err = 0;
  for (int64_t i = 0; i < c.Rows(); ++i) {
    const int64_t t = from + i;
    for (int qh = 0; qh < kQ; ++qh) {
      const bool s = streaming_head(layer, qh / (kQ / kKv));
      const auto ref = Attention(layer, toks, t, qh,
                                 [&](int64_t j) { return !s || j < sink || j > t - window; });
      for (int d = 0; d < kDim; ++d) {
        err = std::max(err, std::abs(D(c.o[(i * kQ + qh) * kDim + d]) - ref[d]));
      }
    }
  }
  return err;
}
bool NoStreaming(int, int) { return false; }

// Opens `prompt` and prefills it with attention in `chunk`-token chunks, every layer; returns the
// sequence and the worst error of any output.
SequenceId PrefillAll(DecodeWorker& w, const std::vector<int32_t>& prompt, int64_t chunk,
                      double* err, int64_t* cached = nullptr) {
  auto opened = w.Open(prompt);
  EXPECT_TRUE(opened.ok()) << opened.status();
  if (cached != nullptr) *cached = opened->cached_tokens;
  for (int l = 0; l < kLayers; ++l) {
    for (int64_t t = opened->cached_tokens; t < static_cast<int64_t>(prompt.size()); t += chunk) {
      const int64_t n = std::min<int64_t>(chunk, static_cast<int64_t>(prompt.size()) - t);
      Chunk c = MakeChunk(l, prompt, t, n);
      const absl::Status s = w.PrefillAttend(opened->id, l, c.Q(), c.K(), c.V(), c.O());
      EXPECT_TRUE(s.ok()) << s;
      *err = std::max(*err, ChunkError(l, prompt, t, c, NoStreaming));
    }
  }
  return opened->id;
}

TEST(PrefillAttend, ChunksEqualCausalAttentionOverEverythingBefore) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  for (int64_t chunk : {1, 3, 4, 7, 29}) {  // within a page, page-sized, across pages, one call
    auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), Options(64));
    ASSERT_TRUE(w.ok()) << w.status();
    double err = 0;
    const SequenceId id = PrefillAll(**w, Prompt(29, 1 + static_cast<int32_t>(chunk)), chunk, &err);
    EXPECT_LT(err, kTol) << "chunk " << chunk;
    // The prompt is then decoded from as after Prefill.
    EXPECT_EQ(*(*w)->Length(id, 1), 29);
    auto plan = (*w)->Plan({id}, {7});
    ASSERT_TRUE(plan.ok()) << plan.status();
  }
}

// A second worker (a fresh pool) finds the prefix the first wrote; its prefill attends the cached
// pages, gathered from the store's host tier and verified, without the caller recomputing them.
TEST(PrefillAttend, APrefixHitIsAttendedFromTheStore) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  auto w1 = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), Options(64));
  ASSERT_TRUE(w1.ok());
  double err = 0;
  const std::vector<int32_t> first = Prompt(22, 5);
  PrefillAll(**w1, first, 8, &err);
  ASSERT_TRUE((*w1)->Flush().ok());
  std::vector<int32_t> second(first.begin(), first.begin() + 17);  // shares 4 whole pages
  for (int i = 0; i < 10; ++i) second.push_back(9000 + i);
  auto w2 = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), Options(64));
  ASSERT_TRUE(w2.ok());
  int64_t cached = -1;
  PrefillAll(**w2, second, 5, &err, &cached);
  EXPECT_EQ(cached, 16);
  EXPECT_LT(err, kTol);
  EXPECT_GT((*w2)->Stats().pool_used, 0);
}

TEST(PrefillAttend, StreamingHeadsAttendSinksAndWindowOnly) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  DecodeWorkerOptions o = Options(64);
  o.layer_streaming_heads = {{1}, {0}};
  o.streaming_sink_pages = 1;
  o.streaming_window_pages = 2;
  auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(w.ok()) << w.status();
  const std::vector<int32_t> prompt = Prompt(41, 8);
  auto opened = (*w)->Open(prompt);
  ASSERT_TRUE(opened.ok());
  auto streaming = [](int layer, int h) {
    return (layer == 0 && h == 1) || (layer == 1 && h == 0);
  };
  double err = 0, dense_err = 0;
  for (int l = 0; l < kLayers; ++l) {
    for (int64_t t = 0; t < 41; t += 9) {
      const int64_t n = std::min<int64_t>(9, 41 - t);
      Chunk c = MakeChunk(l, prompt, t, n);
      ASSERT_TRUE((*w)->PrefillAttend(opened->id, l, c.Q(), c.K(), c.V(), c.O()).ok());
      err = std::max(err, ChunkError(l, prompt, t, c, streaming, kPage, 2 * kPage));
      if (t > 2 * kPage + kPage)
        dense_err = std::max(dense_err, ChunkError(l, prompt, t, c, NoStreaming));
    }
  }
  EXPECT_LT(err, kTol);
  EXPECT_GT(dense_err, 10 * kTol);  // the streaming heads' outputs are not dense attention
}

TEST(PrefillAttend, BadInputIsRefusedAndChangesNothing) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  // 6 slots per head: a dense head can read at most 6 head-pages at once.
  auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), Options(6));
  ASSERT_TRUE(w.ok());
  const std::vector<int32_t> prompt = Prompt(40, 9);
  auto opened = (*w)->Open(prompt);
  ASSERT_TRUE(opened.ok());
  const SequenceId id = opened->id;
  Chunk c = MakeChunk(0, prompt, 0, 8);
  const std::vector<uint16_t> o_before = c.o;
  using C = absl::StatusCode;
  auto expect = [&](absl::Status s, C code, const char* what) {
    EXPECT_EQ(s.code(), code) << what << ": " << s;
    EXPECT_EQ(*(*w)->Length(id, 0), 0) << what;
    EXPECT_EQ(c.o, o_before) << what;
  };
  Chunk short_q = c;
  short_q.q.resize(short_q.q.size() / 2);
  TensorView q_rows = TensorView::Contiguous(short_q.q.data(), DType::kFp16, {4, kQ, kDim});
  expect((*w)->PrefillAttend(id, 0, q_rows, c.K(), c.V(), c.O()), C::kInvalidArgument, "q rows");
  TensorView o_bf16 = c.O();
  o_bf16.dtype = DType::kBf16;
  expect((*w)->PrefillAttend(id, 0, c.Q(), c.K(), c.V(), o_bf16), C::kInvalidArgument, "o dtype");
  TensorView q_heads = TensorView::Contiguous(c.q.data(), DType::kFp16, {8, kKv, 2 * kDim});
  expect((*w)->PrefillAttend(id, 0, q_heads, c.K(), c.V(), c.O()), C::kInvalidArgument, "q shape");
  Chunk nan = c;
  nan.q[5] = 0x7e00;
  expect((*w)->PrefillAttend(id, 0, nan.Q(), c.K(), c.V(), c.O()), C::kInvalidArgument, "NaN q");
  expect((*w)->PrefillAttend(id + 100, 0, c.Q(), c.K(), c.V(), c.O()), C::kInvalidArgument,
         "unknown sequence");
  expect((*w)->PrefillAttend(id, kLayers, c.Q(), c.K(), c.V(), c.O()), C::kInvalidArgument,
         "layer out of range");
  Chunk too_long = MakeChunk(0, Prompt(48, 9), 0, 44);  // the prompt has 40 tokens
  expect((*w)->PrefillAttend(id, 0, too_long.Q(), too_long.K(), too_long.V(), too_long.O()),
         C::kInvalidArgument, "more rows than the prompt");
  // 28 tokens = 7 pages for a dense head: more than the pool's 6 slots.
  Chunk big = MakeChunk(0, prompt, 0, 28);
  const std::vector<uint16_t> big_before = big.o;
  EXPECT_EQ((*w)->PrefillAttend(id, 0, big.Q(), big.K(), big.V(), big.O()).code(),
            C::kResourceExhausted);
  EXPECT_EQ(*(*w)->Length(id, 0), 0);
  EXPECT_EQ(big.o, big_before);
  // Nothing changed: the same chunk then goes through, and so does the rest in smaller chunks
  // until the context itself outgrows the pool.
  ASSERT_TRUE((*w)->PrefillAttend(id, 0, c.Q(), c.K(), c.V(), c.O()).ok());
  EXPECT_LT(ChunkError(0, prompt, 0, c, NoStreaming), kTol);
  Chunk next = MakeChunk(0, prompt, 8, 8);
  ASSERT_TRUE((*w)->PrefillAttend(id, 0, next.Q(), next.K(), next.V(), next.O()).ok());
  EXPECT_LT(ChunkError(0, prompt, 8, next, NoStreaming), kTol);
  Chunk third = MakeChunk(0, prompt, 16, 8);  // 24 tokens: 6 pages, the whole pool
  ASSERT_TRUE((*w)->PrefillAttend(id, 0, third.Q(), third.K(), third.V(), third.O()).ok());
  EXPECT_LT(ChunkError(0, prompt, 16, third, NoStreaming), kTol);
  Chunk fourth = MakeChunk(0, prompt, 24, 1);  // 25 tokens: 7 pages
  EXPECT_EQ((*w)->PrefillAttend(id, 0, fourth.Q(), fourth.K(), fourth.V(), fourth.O()).code(),
            C::kResourceExhausted);
  EXPECT_EQ(*(*w)->Length(id, 0), 24);
}

// A cached page corrupted in the store's host arena is never attended: Open's verified read of the
// prefix drops it (a shorter hit), and a page corrupted after Open took its checksum is caught by
// the verified gather and read again through the store, which fails its checksum too, so the
// sequence fails with DataLoss and o is left unwritten.
TEST(PrefillAttend, ACorruptCachedPageIsNeverAttended) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  const DecodeWorkerOptions o = Options(64);
  const std::vector<int32_t> prompt = Prompt(24, 12);
  {
    auto w1 = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
    ASSERT_TRUE(w1.ok());
    double err = 0;
    PrefillAll(**w1, prompt, 24, &err);
    ASSERT_TRUE((*w1)->Flush().ok());
  }
  std::vector<int32_t> longer = prompt;
  for (int i = 0; i < 6; ++i) longer.push_back(7000 + i);
  auto w2 = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(w2.ok());
  auto opened = (*w2)->Open(longer);
  ASSERT_TRUE(opened.ok());
  EXPECT_EQ(opened->cached_tokens, 24);
  const PageKeyExtra extra{o.model_id, 0, o.salt};
  const std::vector<PageKey> keys = ChainPageKeys(prompt, kPage, extra);
  auto lease = store->AcquireRead(o.tenant, keys[2]);
  ASSERT_TRUE(lease.ok()) << lease.status();
  store->HostArenaInfo().base[lease->arena_offset + 40] ^= 0x08;
  ASSERT_TRUE(store->ReleaseRead(lease->lease_id).ok());
  Chunk c = MakeChunk(0, longer, 24, 6);
  const std::vector<uint16_t> o_before = c.o;
  const absl::Status s = (*w2)->PrefillAttend(opened->id, 0, c.Q(), c.K(), c.V(), c.O());
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_EQ(c.o, o_before);  // nothing attended
  // The undamaged layer of another worker's sequence is unaffected.
  auto w3 = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(w3.ok());
  auto other = (*w3)->Open(longer);
  ASSERT_TRUE(other.ok());
  Chunk c1 = MakeChunk(1, longer, other->cached_tokens, 30 - other->cached_tokens);
  ASSERT_TRUE((*w3)->PrefillAttend(other->id, 1, c1.Q(), c1.K(), c1.V(), c1.O()).ok());
  EXPECT_LT(ChunkError(1, longer, other->cached_tokens, c1, NoStreaming), kTol);
}

// Two sequences of one prompt opened before either wrote it: the second's pages are already in
// the store when it prefills (the store refuses a second reservation of a key), so they are only
// checksummed, never written twice; both attend exactly.
TEST(PrefillAttend, APageAlreadyStoredIsNotWrittenAgain) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  auto w = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), Options(64));
  ASSERT_TRUE(w.ok());
  const std::vector<int32_t> prompt = Prompt(26, 14);
  auto a = (*w)->Open(prompt), b = (*w)->Open(prompt);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(b->cached_tokens, 0);
  for (int l = 0; l < kLayers; ++l) {
    for (SequenceId id : {a->id, b->id}) {
      Chunk c = MakeChunk(l, prompt, 0, 26);
      ASSERT_TRUE((*w)->PrefillAttend(id, l, c.Q(), c.K(), c.V(), c.O()).ok());
      EXPECT_LT(ChunkError(l, prompt, 0, c, NoStreaming), kTol);
    }
  }
  ASSERT_TRUE((*w)->Flush().ok());
  const WorkerStats st = (*w)->Stats();
  EXPECT_EQ(st.pages_committed, kLayers * 6);  // 6 whole pages per layer, once
  auto plan = (*w)->Plan({a->id, b->id}, {1, 2});
  ASSERT_TRUE(plan.ok()) << plan.status();
}

// A host tier that cannot take the chunk's pages (every slot pinned: pin_prompt over a tier of 8
// pages) refuses the write with ResourceExhausted and fails the sequence; nothing is attended.
TEST(PrefillAttend, AFullHostTierIsAClearError) {
  TempDir dir;
  StoreOptions so;
  so.layouts = {Layout()};
  so.host_capacity_bytes = 8 * Layout().PageBytes();
  so.segment_bytes = 4 * Layout().PageBytes();
  so.data_dir = dir.path();
  auto store = Store::Open(so);
  ASSERT_TRUE(store.ok()) << store.status();
  DecodeWorkerOptions o = Options(64);
  o.pin_prompt = true;
  auto w = DecodeWorker::Create(store->get(), MakeCpuWorkerBackend(), o);
  ASSERT_TRUE(w.ok());
  const std::vector<int32_t> prompt = Prompt(48, 15);
  auto opened = (*w)->Open(prompt);
  ASSERT_TRUE(opened.ok());
  Chunk c = MakeChunk(0, prompt, 0, 48);  // 12 pages
  const std::vector<uint16_t> o_before = c.o;
  const absl::Status s = (*w)->PrefillAttend(opened->id, 0, c.Q(), c.K(), c.V(), c.O());
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(c.o, o_before);
  // The sequence is failed; a new one that fits is served.
  EXPECT_EQ((*w)->PrefillAttend(opened->id, 0, c.Q(), c.K(), c.V(), c.O()).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE((*w)->Close(opened->id).ok());
}

}  // namespace
}  // namespace pagoda
