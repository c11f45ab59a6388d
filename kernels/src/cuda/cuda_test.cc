// GPU tests: every CUDA kernel against its CPU reference, on fresh random inputs with poisoned
// outputs. Needs a GPU (bench/gpu/run.sh runs it there); skips where none is visible.
#include "pagoda/kernels/cuda.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <tuple>
#include <vector>

#include "decode_problem.h"
#include "gpu_test_util.h"
#include "gtest/gtest.h"
#include "pagoda/kernels/reference.h"
#include "quest_problem.h"

namespace pagoda::kernels {
namespace {

using testing::DecodeCase;
using testing::DecodeProblem;
using testing::kPoison;

// Device mirror of a DecodeProblem.
struct DevDecode {
  explicit DevDecode(DecodeProblem& pr)
      : pool(pr.pool.data),
        indptr(pr.indptr),
        indices(pr.indices),
        last(pr.last),
        q(pr.q),
        o(pr.o),
        lse(pr.lse),
        streaming(pr.streaming_heads) {
    params = pr.params();
    params.kv.k = pool.get();
    params.kv.v = pool.get() + size_t{1} * pr.c.kv_heads * pr.c.page_size * pr.c.head_dim;
    params.table.indptr = indptr.get();
    params.table.indices = indices.get();
    params.table.last_page_len = last.get();
    params.q = q.get();
    params.o = o.get();
    params.lse = lse.get();
    params.is_streaming = streaming.get();
  }
  Dev<uint16_t> pool;
  Dev<int32_t> indptr, indices, last;
  Dev<uint16_t> q, o;
  Dev<float> lse;
  Dev<uint8_t> streaming;
  DecodeParams params;
};

int64_t MaxRowTokens(const DecodeProblem& pr) {
  int64_t most = 0;
  for (int32_t r = 0; r < pr.rows(); ++r) {
    const int32_t n = pr.indptr[r + 1] - pr.indptr[r];
    most = std::max<int64_t>(most, n == 0 ? 0 : int64_t{n - 1} * pr.c.page_size + pr.last[r]);
  }
  return most;
}

// GPU output vs reference output: elementwise within two roundings of the stored type, normwise
// within METHOD.md's bounds, same untouched rows, no NaN.
void ExpectClose(const DecodeProblem& ref, const std::vector<uint16_t>& o,
                 const std::vector<float>& lse) {
  const double eps = testing::Eps(ref.c.dtype);
  std::vector<double> want, got;
  for (size_t i = 0; i < ref.o.size(); ++i) {
    if (ref.o[i] == kPoison) {
      ASSERT_EQ(o[i], kPoison) << "GPU wrote an output the definition leaves alone, at " << i;
      continue;
    }
    const double r = testing::D(ref.o[i], ref.c.dtype), g = testing::D(o[i], ref.c.dtype);
    ASSERT_FALSE(std::isnan(g)) << "unwritten or NaN GPU output at " << i;
    ASSERT_NEAR(g, r, 2 * eps * std::fabs(r) + 2e-3) << "at " << i;
    want.push_back(r);
    got.push_back(g);
  }
  EXPECT_LT(testing::RelErr(want, got), ref.c.dtype == DType::kFloat16 ? 2e-3 : 1e-2);
  for (size_t i = 0; i < ref.lse.size(); ++i) {
    if (std::isnan(ref.lse[i])) continue;
    if (std::isinf(ref.lse[i])) {
      EXPECT_TRUE(std::isinf(lse[i]) && lse[i] < 0) << i;
    } else {
      ASSERT_NEAR(lse[i], ref.lse[i], 1e-3 * (1 + std::fabs(ref.lse[i]))) << i;
    }
  }
}

void RunDecodeCase(const DecodeCase& c, uint32_t seed, const gpu::DecodePlanOptions& opt) {
  std::mt19937 rng(seed);
  DecodeProblem pr = testing::MakeDecodeProblem(rng, c);
  pr.sink = 5;
  pr.window = 3 * c.page_size + 7;
  DevDecode dev(pr);
  const bool streaming = c.streaming;
  ASSERT_TRUE(streaming ? StreamingDecodeReference(pr.params()).ok()
                        : SparseDecodeReference(pr.params()).ok());
  const int64_t most = streaming ? pr.sink + pr.window : MaxRowTokens(pr);
  auto plan = gpu::PlanDecode(dev.params, streaming, most, opt);
  ASSERT_TRUE(plan.ok()) << plan.status();
  Dev<uint8_t> ws(plan->workspace_bytes);
  const absl::Status s = streaming ? gpu::StreamingDecode(*plan, dev.params, ws.get(), nullptr)
                                   : gpu::SparseDecode(*plan, dev.params, ws.get(), nullptr);
  ASSERT_TRUE(s.ok()) << s;
  CUDA_OK(cudaDeviceSynchronize());
  ExpectClose(pr, dev.o.Host(), dev.lse.Host());
}

class GpuDecode : public GpuTest,
                  public ::testing::WithParamInterface<std::tuple<DType, int, int, int, bool>> {};

TEST_P(GpuDecode, SparseMatchesReference) {
  const auto [dtype, dim, group, page_size, split] = GetParam();
  DecodeCase c;
  c.dtype = dtype;
  c.head_dim = dim;
  c.group = group;
  c.page_size = page_size;
  c.kv_heads = 2;
  c.max_pages = std::max(2, 1500 / page_size);
  c.pool_pages = 3 * c.max_pages;
  gpu::DecodePlanOptions opt;
  if (split)
    opt.min_chunk_tokens = 64;  // many chunks and a merge
  else
    opt.max_chunks = 1;
  opt.pipeline_stages = split ? 3 : 4;  // the streaming test below takes the other two pairs
  for (uint32_t rep = 0; rep < 2; ++rep) {
    c.per_kv_head = rep == 0;
    RunDecodeCase(c, rep * 7919 + dim + group * 13 + page_size, opt);
  }
}

TEST_P(GpuDecode, StreamingMatchesReference) {
  const auto [dtype, dim, group, page_size, split] = GetParam();
  DecodeCase c;
  c.dtype = dtype;
  c.head_dim = dim;
  c.group = group;
  c.page_size = page_size;
  c.kv_heads = 3;
  c.streaming = true;
  c.max_pages = std::max(2, 600 / page_size);
  c.pool_pages = 2 * c.max_pages;
  gpu::DecodePlanOptions opt;
  if (split)
    opt.min_chunk_tokens = 64;
  else
    opt.max_chunks = 1;
  opt.pipeline_stages = split ? 4 : 3;
  RunDecodeCase(c, 31 + dim + group + page_size, opt);
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuDecode,
                         ::testing::Combine(::testing::Values(DType::kFloat16, DType::kBFloat16),
                                            ::testing::Values(64, 128),
                                            ::testing::Values(1, 3, 4, 8),
                                            ::testing::Values(1, 16, 32, 64), ::testing::Bool()));

// The split's merge paths at forced chunk counts: mode 0 fused with a per-run counter memset
// (over a workspace full of garbage), 1 fused over a workspace zeroed once (three runs with new
// data, the counters back at zero after each), 2 the two-kernel merge, 3 as 1 with the 4-stage
// pipeline (the others: 3 stages, 2: 4). Odd row lengths, empty rows,
// poisoned outputs; streaming heads (some blocks exit before counting) for the fused path too.
class GpuDecodeMerge : public GpuTest,
                       public ::testing::WithParamInterface<std::tuple<int, int, int, int>> {};

TEST_P(GpuDecodeMerge, SplitsMatchReference) {
  const auto [chunks, mode, group, dim] = GetParam();
  for (const bool streaming : {false, true}) {
    std::mt19937 rng(1000 * chunks + 10 * mode + group + dim + streaming);
    DecodeCase c;
    c.head_dim = dim;
    c.group = group;
    c.kv_heads = 3;
    c.batch = 5;
    c.max_pages = 160;  // up to 2560 tokens a row: up to 40 chunks of 64
    c.pool_pages = 400;
    c.streaming = streaming;
    DecodeProblem pr = testing::MakeDecodeProblem(rng, c);
    pr.sink = 37;
    pr.window = 1900;
    DevDecode dev(pr);
    gpu::DecodePlanOptions opt;
    opt.max_chunks = chunks;
    opt.min_chunk_tokens = 1;
    opt.chunk_overhead_tokens = 0;
    opt.blocks_per_sm = 1 << 20;  // one wave whatever the count: PlanDecode takes `chunks`
    opt.fused_merge = mode != 2;
    opt.zeroed_workspace = mode == 1 || mode == 3;
    opt.pipeline_stages = mode == 2 || mode == 3 ? 4 : 3;
    const int64_t most = streaming ? pr.sink + pr.window : MaxRowTokens(pr);
    auto plan = gpu::PlanDecode(dev.params, streaming, most, opt);
    ASSERT_TRUE(plan.ok()) << plan.status();
    ASSERT_GT(plan->num_chunks, 1);
    ASSERT_EQ(plan->counter_bytes(), mode == 2 ? 0u : sizeof(int32_t) * c.batch * c.kv_heads);
    ASSERT_EQ(plan->pipeline_stages, opt.pipeline_stages);
    std::vector<uint8_t> garbage(plan->workspace_bytes, opt.zeroed_workspace ? 0 : 0xa5);
    Dev<uint8_t> ws(garbage);
    for (int run = 0; run < (opt.zeroed_workspace ? 3 : 1); ++run) {
      if (run > 0) {  // new data in the same buffers, outputs poisoned again
        pr.q = testing::RandomValues(rng, pr.q.size(), c.dtype, 0.5f);
        std::fill(pr.o.begin(), pr.o.end(), kPoison);
        std::fill(pr.lse.begin(), pr.lse.end(), std::nanf(""));
        dev.q.Put(pr.q);
        dev.o.Put(pr.o);
        dev.lse.Put(pr.lse);
      }
      const absl::Status s = streaming ? gpu::StreamingDecode(*plan, dev.params, ws.get(), nullptr)
                                       : gpu::SparseDecode(*plan, dev.params, ws.get(), nullptr);
      ASSERT_TRUE(s.ok()) << s;
      CUDA_OK(cudaDeviceSynchronize());
      ASSERT_TRUE(streaming ? StreamingDecodeReference(pr.params()).ok()
                            : SparseDecodeReference(pr.params()).ok());
      SCOPED_TRACE(::testing::Message() << "chunks " << plan->num_chunks << " mode " << mode
                                        << " streaming " << streaming << " run " << run);
      ExpectClose(pr, dev.o.Host(), dev.lse.Host());
      const std::vector<uint8_t> after = ws.Host();
      for (size_t i = 0; i < plan->counter_bytes(); ++i) {
        ASSERT_EQ(after[i], 0) << "arrival counters not left at zero, byte " << i;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Splits, GpuDecodeMerge,
                         ::testing::Combine(::testing::Values(2, 3, 5, 17, 64),
                                            ::testing::Values(0, 1, 2, 3),
                                            ::testing::Values(1, 4, 8),
                                            ::testing::Values(64, 128)));

TEST_F(GpuTest, DecodeGraphReplaySeesNewData) {
  std::mt19937 rng(77);
  DecodeCase c;
  c.batch = 4;
  c.max_pages = 40;
  c.pool_pages = 120;
  DecodeProblem pr = testing::MakeDecodeProblem(rng, c);
  DevDecode dev(pr);
  gpu::DecodePlanOptions opt;
  opt.min_chunk_tokens = 64;
  auto plan = gpu::PlanDecode(dev.params, false, MaxRowTokens(pr), opt);
  ASSERT_TRUE(plan.ok());
  ASSERT_GT(plan->num_chunks, 1);
  Dev<uint8_t> ws(plan->workspace_bytes);
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreate(&stream));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  ASSERT_TRUE(gpu::SparseDecode(*plan, dev.params, ws.get(), stream).ok());
  CUDA_OK(cudaStreamEndCapture(stream, &graph));
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  for (int rep = 0; rep < 3; ++rep) {  // new queries and KV in the same buffers
    pr.q = testing::RandomValues(rng, pr.q.size(), c.dtype, 0.5f);
    pr.pool.data = testing::RandomValues(rng, pr.pool.data.size(), c.dtype);
    std::fill(pr.o.begin(), pr.o.end(), kPoison);
    dev.q.Put(pr.q);
    dev.pool.Put(pr.pool.data);
    dev.o.Put(pr.o);
    CUDA_OK(cudaGraphLaunch(exec, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
    ASSERT_TRUE(SparseDecodeReference(pr.params()).ok());
    ExpectClose(pr, dev.o.Host(), dev.lse.Host());
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

TEST_F(GpuTest, DecodeRejectsUnsupportedShapes) {
  std::mt19937 rng(1);
  DecodeCase c;
  c.batch = 2;
  DecodeProblem pr = testing::MakeDecodeProblem(rng, c);
  DevDecode dev(pr);
  auto plan = gpu::PlanDecode(dev.params, false, 100);
  ASSERT_TRUE(plan.ok());
  DecodeParams p = dev.params;
  p.kv.head_dim = 96;
  EXPECT_FALSE(gpu::PlanDecode(p, false, 100).ok());
  EXPECT_FALSE(gpu::SparseDecode(*plan, p, nullptr, nullptr).ok());
  p = dev.params;
  p.kv.page_size = 24;
  EXPECT_FALSE(gpu::SparseDecode(*plan, p, nullptr, nullptr).ok());
  p = dev.params;
  p.num_qo_heads = 2 * 16;
  EXPECT_FALSE(gpu::PlanDecode(p, false, 100).ok());
  p = dev.params;
  p.batch = 3;
  p.table.num_rows = 3 * c.kv_heads;
  EXPECT_FALSE(gpu::SparseDecode(*plan, p, nullptr, nullptr).ok()) << "plan mismatch";
  EXPECT_FALSE(gpu::StreamingDecode(*plan, dev.params, nullptr, nullptr).ok());
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_EQ(dev.o.Host(), pr.o) << "rejected calls wrote nothing";
}

class GpuSummary : public GpuTest,
                   public ::testing::WithParamInterface<std::tuple<DType, int, int, int>> {};

TEST_P(GpuSummary, IncrementalUpdatesMatchReference) {
  const auto [dtype, dim, page_size, subs] = GetParam();
  std::mt19937 rng(dim + page_size + subs);
  const int32_t pages = 300, heads = 4;
  testing::Pool pool = testing::RandomPool(rng, dtype, pages, page_size, heads, dim);
  const size_t n = size_t{1} * pages * subs * heads * dim;
  std::vector<uint16_t> mn(n, kPoison), mx(n, kPoison), mean(n, kPoison);
  std::vector<int32_t> count(pages, 0);
  Dev<uint16_t> dpool(pool.data), dmn(mn), dmx(mx), dmean(mean);
  Dev<int32_t> dcount(count);
  std::uniform_int_distribution<int32_t> step(0, page_size / 2 + 1);
  for (int round = 0; round < 6; ++round) {
    std::vector<int32_t> ids, counts;
    for (int32_t p = 0; p < pages; ++p) {
      if ((p + round) % 4 == 0) continue;
      ids.push_back(p);
      counts.push_back(std::min(page_size, count[p] + step(rng)));
    }
    SummaryUpdateParams up;
    up.kv = pool.kv();
    up.summaries = {dtype,     pages,     subs,        heads,       dim,
                    mn.data(), mx.data(), mean.data(), count.data()};
    up.num_updates = static_cast<int32_t>(ids.size());
    up.pages = ids.data();
    up.new_count = counts.data();
    ASSERT_TRUE(UpdateSummariesReference(up).ok());
    Dev<int32_t> dids(ids), dcounts(counts);
    SummaryUpdateParams dup = up;
    dup.kv.k = dpool.get();
    dup.kv.v = nullptr;
    dup.summaries.min = dmn.get();
    dup.summaries.max = dmx.get();
    dup.summaries.mean = dmean.get();
    dup.summaries.count = dcount.get();
    dup.pages = dids.get();
    dup.new_count = dcounts.get();
    ASSERT_TRUE(gpu::UpdateSummaries(dup, nullptr).ok());
    CUDA_OK(cudaDeviceSynchronize());
    ASSERT_EQ(dcount.Host(), count);
    ASSERT_EQ(dmn.Host(), mn) << "min is exact";
    ASSERT_EQ(dmx.Host(), mx) << "max is exact";
    const auto gmean = dmean.Host();
    for (size_t i = 0; i < n; ++i) {
      if (mean[i] == kPoison) {
        ASSERT_EQ(gmean[i], kPoison);
        continue;
      }
      const double r = testing::D(mean[i], dtype);
      ASSERT_NEAR(testing::D(gmean[i], dtype), r, testing::Eps(dtype) * 2 * std::fabs(r) + 1e-6);
    }
  }
}

// The decode worker's shape (per-head slots, a summary table of its own, caller counts, no means).
TEST_F(GpuTest, HeadGranularSummariesMatchReference) {
  std::mt19937 rng(11);
  for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
    const int32_t slots = 64, heads = 8, dim = 128, ps = 16, table = 40, n = 12;
    testing::Pool pool = testing::RandomPool(rng, dtype, slots, ps, heads, dim);
    const size_t elems = size_t{1} * table * heads * dim;
    // A summary folded into (old count > 0) holds finite earlier min / max (poison is NaN, which
    // fminf and std::min treat differently).
    std::vector<uint16_t> mn = testing::RandomValues(rng, elems, dtype);
    std::vector<uint16_t> mx = testing::RandomValues(rng, elems, dtype);
    std::vector<int32_t> count(table, 3);
    std::vector<int32_t> head_pages, sum_pages, olds, news;
    std::uniform_int_distribution<int32_t> slot(0, slots - 1), len(0, ps - 1);
    for (int32_t i = 0; i < n; ++i) {
      for (int32_t h = 0; h < heads; ++h) head_pages.push_back(slot(rng));
      sum_pages.push_back(3 * i);
      olds.push_back(i % 3 == 0 ? 0 : len(rng));
      news.push_back(std::min(ps, olds.back() + 1 + i % 4));
    }
    SummaryUpdateParams up;
    up.kv = pool.kv();
    up.summaries = {dtype, table, 1, heads, dim, mn.data(), mx.data(), nullptr, count.data()};
    up.num_updates = n;
    up.pages = sum_pages.data();
    up.new_count = news.data();
    up.head_pages = head_pages.data();
    up.summary_pages = sum_pages.data();
    up.old_count = olds.data();
    Dev<uint16_t> dpool(pool.data), dmn(mn), dmx(mx);
    Dev<int32_t> dcount(count), dhp(head_pages), dsp(sum_pages), dold(olds), dnew(news);
    ASSERT_TRUE(UpdateSummariesReference(up).ok());
    SummaryUpdateParams dup = up;
    dup.kv.k = dpool.get();
    dup.kv.v = nullptr;
    dup.summaries.min = dmn.get();
    dup.summaries.max = dmx.get();
    dup.summaries.count = dcount.get();
    dup.pages = dsp.get();
    dup.new_count = dnew.get();
    dup.head_pages = dhp.get();
    dup.summary_pages = dsp.get();
    dup.old_count = dold.get();
    ASSERT_TRUE(gpu::UpdateSummaries(dup, nullptr).ok());
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_EQ(dcount.Host(), count);
    EXPECT_EQ(dmn.Host(), mn);
    EXPECT_EQ(dmx.Host(), mx);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuSummary,
                         ::testing::Combine(::testing::Values(DType::kFloat16, DType::kBFloat16),
                                            ::testing::Values(64, 128), ::testing::Values(16, 64),
                                            ::testing::Values(1, 4)));

class GpuQuest
    : public GpuTest,
      public ::testing::WithParamInterface<std::tuple<DType, int, int, int, GroupReduce, int>> {};

TEST_P(GpuQuest, ScoresAndTopKMatchReference) {
  const auto [dtype, dim, group, subs, reduce, per_seq] = GetParam();
  std::mt19937 rng(dim + group + subs * 3 + per_seq);
  testing::QuestCase c;
  c.dtype = dtype;
  c.head_dim = dim;
  c.group = group;
  c.sub_pages = subs;
  c.page_size = 16 * subs;
  c.reduce = reduce;
  c.pages_per_seq = per_seq;
  c.top_k = per_seq / 8 + 1;
  c.batch = per_seq > 1000 ? 5 : 17;
  c.direct_summaries = per_seq > 1000;
  testing::QuestProblem pr = testing::MakeQuestProblem(rng, c);
  Dev<uint16_t> q(pr.q), mn(pr.smin), mx(pr.smax);
  Dev<int32_t> count(pr.count), ci(pr.cand_indptr), cand(pr.cand), ki(pr.keep_indptr),
      keep(pr.keep), last(pr.seq_last), oi(pr.out_indptr), oidx(pr.out_indices), olast(pr.out_last);
  Dev<float> scores(pr.scores);
  QuestParams dp = pr.params();
  dp.q = q.get();
  dp.summaries.min = mn.get();
  dp.summaries.max = mx.get();
  dp.summaries.mean = nullptr;
  dp.summaries.count = count.get();
  dp.cand_indptr = ci.get();
  dp.cand_pages = cand.get();
  dp.keep_indptr = ki.get();
  dp.keep_pages = keep.get();
  dp.seq_last_page_len = last.get();
  dp.scores = scores.get();
  dp.out_indptr = oi.get();
  dp.out_indices = oidx.get();
  dp.out_last_page_len = olast.get();
  int32_t most = 0;
  for (int32_t b = 0; b < c.batch; ++b) {
    most = std::max(most, pr.cand_indptr[b + 1] - pr.cand_indptr[b]);
  }
  auto plan = gpu::PlanQuest(dp, most);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_TRUE(gpu::QuestSelect(*plan, dp, nullptr, nullptr).ok());
  CUDA_OK(cudaDeviceSynchronize());
  ASSERT_TRUE(QuestSelectReference(pr.params()).ok());
  const auto gs = scores.Host();
  const auto gi = oi.Host();
  const auto gx = oidx.Host();
  EXPECT_EQ(gi, pr.out_indptr);
  EXPECT_EQ(olast.Host(), pr.out_last);
  const int32_t nc = pr.cand_indptr[c.batch];
  for (int32_t i = 0; i < c.kv_heads * nc; ++i) {
    ASSERT_NEAR(gs[i], pr.scores[i], 1e-4 * (1 + std::fabs(pr.scores[i]))) << i;
  }
  // The GPU's selection is the exact top-k of the GPU's scores (ties to the earlier candidate),
  // in candidate order, then the kept pages.
  for (int32_t b = 0; b < c.batch; ++b) {
    const int32_t c0 = pr.cand_indptr[b], n = pr.cand_indptr[b + 1] - c0;
    const int32_t k = std::min(c.top_k, n);
    for (int32_t h = 0; h < c.kv_heads; ++h) {
      const int32_t row = b * c.kv_heads + h;
      const float* sc = &gs[size_t{1} * h * nc + c0];
      std::vector<int32_t> order(n);
      for (int32_t j = 0; j < n; ++j) order[j] = j;
      std::sort(order.begin(), order.end(),
                [sc](int32_t a, int32_t x) { return sc[a] > sc[x] || (sc[a] == sc[x] && a < x); });
      order.resize(k);
      std::sort(order.begin(), order.end());
      for (int32_t i = 0; i < k; ++i) {
        ASSERT_EQ(gx[gi[row] + i], pr.cand[c0 + order[i]]) << "row " << row << " pick " << i;
      }
      for (int32_t i = k; i < gi[row + 1] - gi[row]; ++i) {
        ASSERT_EQ(gx[gi[row] + i], pr.keep[pr.keep_indptr[b] + i - k]);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuQuest,
                         ::testing::Combine(::testing::Values(DType::kFloat16, DType::kBFloat16),
                                            ::testing::Values(64, 128), ::testing::Values(1, 4, 7),
                                            ::testing::Values(1, 4),
                                            ::testing::Values(GroupReduce::kMax, GroupReduce::kSum),
                                            ::testing::Values(40, 3000)));

TEST_F(GpuTest, QuestTiesGoToTheEarlierCandidate) {
  std::mt19937 rng(3);
  testing::QuestCase c;
  c.batch = 2;
  c.kv_heads = 1;
  c.group = 2;
  c.head_dim = 64;
  c.pages_per_seq = 1200;
  c.keep = 0;
  c.top_k = 300;
  c.direct_summaries = true;
  testing::QuestProblem pr = testing::MakeQuestProblem(rng, c);
  for (int32_t p = 1; p < pr.pool_pages; ++p) {  // identical summaries: every score ties
    std::copy_n(pr.smin.begin(), 64, pr.smin.begin() + p * 64);
    std::copy_n(pr.smax.begin(), 64, pr.smax.begin() + p * 64);
  }
  std::fill(pr.count.begin(), pr.count.end(), 16);
  Dev<uint16_t> q(pr.q), mn(pr.smin), mx(pr.smax);
  Dev<int32_t> count(pr.count), ci(pr.cand_indptr), cand(pr.cand), ki(pr.keep_indptr),
      keep(pr.keep), last(pr.seq_last), oi(pr.out_indptr), oidx(pr.out_indices), olast(pr.out_last);
  Dev<float> scores(pr.scores);
  QuestParams dp = pr.params();
  dp.q = q.get();
  dp.summaries.min = mn.get();
  dp.summaries.max = mx.get();
  dp.summaries.count = count.get();
  dp.cand_indptr = ci.get();
  dp.cand_pages = cand.get();
  dp.keep_indptr = ki.get();
  dp.keep_pages = keep.get();
  dp.seq_last_page_len = last.get();
  dp.scores = scores.get();
  dp.out_indptr = oi.get();
  dp.out_indices = oidx.get();
  dp.out_last_page_len = olast.get();
  auto plan = gpu::PlanQuest(dp, 1200);
  ASSERT_TRUE(plan.ok());
  ASSERT_TRUE(gpu::QuestSelect(*plan, dp, nullptr, nullptr).ok());
  ASSERT_TRUE(QuestSelectReference(pr.params()).ok());
  EXPECT_EQ(oidx.Host(), pr.out_indices);
}

class GpuKMeans : public GpuTest, public ::testing::WithParamInterface<std::tuple<DType, int>> {};

TEST_P(GpuKMeans, AssignAndUpdateMatchReference) {
  const auto [dtype, dim] = GetParam();
  std::mt19937 rng(dim);
  const int32_t ps = 16, tokens = 2000 + 7, clusters = 45, heads = 3;
  const int32_t np = (tokens + ps - 1) / ps;
  testing::Pool pool = testing::RandomPool(rng, dtype, np + 9, ps, heads, dim);
  std::vector<int32_t> pages(np);
  for (int32_t i = 0; i < np; ++i) pages[i] = (i * 7) % (np + 9);
  std::vector<float> cent(size_t{1} * heads * clusters * dim);
  std::vector<int32_t> assign(size_t{1} * heads * tokens, -1), size(size_t{1} * heads * clusters);
  KMeansParams p{pool.kv(),   pages.data(),  tokens,     clusters,
                 cent.data(), assign.data(), size.data()};
  ASSERT_TRUE(KMeansInitReference(p).ok());
  Dev<uint16_t> dpool(pool.data);
  Dev<int32_t> dpages(pages), dassign(assign), dsize(size);
  Dev<float> dcent(cent);
  KMeansParams dp{pool.kv(),   dpages.get(),  tokens,     clusters,
                  dcent.get(), dassign.get(), dsize.get()};
  dp.kv.k = dpool.get();
  dp.kv.v = nullptr;
  ASSERT_TRUE(gpu::KMeansAssign(dp, nullptr).ok());
  ASSERT_TRUE(KMeansAssignReference(p).ok());
  const auto ga = dassign.Host();
  int differ = 0;
  for (int32_t h = 0; h < heads; ++h) {
    for (int32_t t = 0; t < tokens; ++t) {
      const int32_t i = h * tokens + t;
      if (ga[i] == assign[i]) continue;
      ++differ;  // only a near tie may differ
      auto dist = [&](int32_t c) {
        double s = 0;
        const uint16_t* k = pool.data.data() + pages[t / ps] * pool.page_elems() +
                            size_t{1} * h * ps * dim + (t % ps) * dim;
        for (int32_t d = 0; d < dim; ++d) {
          const double e = testing::D(k[d], dtype) - cent[(size_t{1} * h * clusters + c) * dim + d];
          s += e * e;
        }
        return s;
      };
      ASSERT_NEAR(dist(ga[i]), dist(assign[i]), 1e-4 * dist(assign[i]) + 1e-5);
    }
  }
  EXPECT_LT(differ, heads * tokens / 100);
  // Update from the same (reference) assignment on both sides.
  dassign.Put(assign);
  Dev<uint8_t> ws(gpu::KMeansWorkspaceBytes(dp));
  ASSERT_TRUE(gpu::KMeansUpdate(dp, ws.get(), nullptr).ok());
  ASSERT_TRUE(KMeansUpdateReference(p).ok());
  EXPECT_EQ(dsize.Host(), size);
  const auto gc = dcent.Host();
  for (size_t i = 0; i < cent.size(); ++i) {
    ASSERT_NEAR(gc[i], cent[i], 1e-5 * (1 + std::fabs(cent[i]))) << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuKMeans,
                         ::testing::Combine(::testing::Values(DType::kFloat16, DType::kBFloat16),
                                            ::testing::Values(64, 128)));

TEST_F(GpuTest, GatherScatterMatchReference) {
  std::mt19937 rng(5);
  for (int64_t page_bytes : {4096 * 16, 100}) {  // 16-byte path and byte path
    const int64_t stride = page_bytes + (page_bytes % 16 == 0 ? 64 : 3), slots = 300;
    std::vector<uint8_t> pool(stride * slots);
    for (auto& b : pool) b = static_cast<uint8_t>(rng());
    std::vector<int32_t> ids(slots);
    for (int32_t i = 0; i < slots; ++i) ids[i] = i;
    std::shuffle(ids.begin(), ids.end(), rng);
    ids.resize(123);
    std::vector<uint8_t> staging(ids.size() * page_bytes, 0);
    Dev<uint8_t> dpool(pool), dstaging(staging);
    Dev<int32_t> dids(ids);
    PageCopyParams hp{pool.data(), slots, stride, page_bytes, ids.data(), 123, staging.data()};
    PageCopyParams dp{dpool.get(), slots, stride, page_bytes, dids.get(), 123, dstaging.get()};
    ASSERT_TRUE(gpu::GatherPages(dp, nullptr).ok());
    ASSERT_TRUE(GatherPagesReference(hp).ok());
    ASSERT_EQ(dstaging.Host(), staging);
    for (auto& b : staging) b = static_cast<uint8_t>(rng());
    dstaging.Put(staging);
    ASSERT_TRUE(gpu::ScatterPages(dp, nullptr).ok());
    ASSERT_TRUE(ScatterPagesReference(hp).ok());
    ASSERT_EQ(dpool.Host(), pool);
  }
}

TEST_F(GpuTest, TokenRowsMatchReference) {
  std::mt19937 rng(6);
  for (int64_t row_bytes : {256, 100}) {  // 16-byte path and byte path
    for (int32_t n : {1, 64, kMaxTokenRows}) {
      const int64_t rows = 1000;
      std::vector<uint8_t> pool(rows * row_bytes), k(n * row_bytes), v(n * row_bytes);
      for (auto* b : {&pool, &k, &v}) {
        for (auto& x : *b) x = static_cast<uint8_t>(rng());
      }
      std::vector<int32_t> ids(rows);
      for (int32_t i = 0; i < rows; ++i) ids[i] = i;
      std::shuffle(ids.begin(), ids.end(), rng);
      Dev<uint8_t> dpool(pool), dk(k), dv(v);
      TokenRowsParams hp;
      hp.pool = pool.data();
      hp.pool_rows = rows;
      hp.row_bytes = row_bytes;
      hp.k = k.data();
      hp.v = v.data();
      hp.num_rows = n;
      for (int32_t i = 0; i < n; ++i) hp.k_rows[i] = ids[2 * i], hp.v_rows[i] = ids[2 * i + 1];
      TokenRowsParams dp = hp;
      dp.pool = dpool.get();
      dp.k = dk.get();
      dp.v = dv.get();
      ASSERT_TRUE(gpu::WriteTokenRows(dp, nullptr).ok());
      ASSERT_TRUE(WriteTokenRowsReference(hp).ok());
      ASSERT_EQ(dpool.Host(), pool) << row_bytes << " " << n;
    }
  }
}

}  // namespace
}  // namespace pagoda::kernels
