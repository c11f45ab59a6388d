// GPU block-sparse prefill against its CPU reference: fp16/bf16, head_dim 64/128, tiles of 64 and
// 128 queries, streaming / dense / selected-page masks, awkward lengths, poisoned outputs.
// Needs a GPU (bench/gpu/run.sh runs it there); skips where none is visible.
#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "gpu_test_util.h"
#include "gtest/gtest.h"
#include "pagoda/kernels/cuda.h"
#include "pagoda/kernels/reference.h"
#include "prefill_problem.h"

namespace pagoda::kernels {
namespace {

using testing::kPoison;
using testing::PrefillCase;
using testing::PrefillProblem;

// Device mirror of a PrefillProblem.
struct DevPrefill {
  explicit DevPrefill(PrefillProblem& pr)
      : pool(pr.pool.data),
        q(pr.q),
        o(pr.o),
        indptr(pr.indptr),
        indices(pr.indices),
        last(pr.last),
        q_indptr(pr.q_indptr),
        sel_indptr(pr.sel_indptr),
        sel_pages(pr.sel_pages),
        lse(pr.lse),
        streaming(pr.streaming_heads) {
    params = pr.params();
    params.kv.k = pool.get();
    params.kv.v = pool.get() + size_t{1} * pr.c.kv_heads * pr.c.page_size * pr.c.head_dim;
    params.table.indptr = indptr.get();
    params.table.indices = indices.get();
    params.table.last_page_len = last.get();
    params.q_indptr = q_indptr.get();
    params.q = q.get();
    params.o = o.get();
    params.lse = lse.get();
    params.is_streaming = streaming.get();
    if (pr.c.select) {
      params.select_indptr = sel_indptr.get();
      params.select_pages = sel_pages.get();
    }
  }
  Dev<uint16_t> pool, q, o;
  Dev<int32_t> indptr, indices, last, q_indptr, sel_indptr, sel_pages;
  Dev<float> lse;
  Dev<uint8_t> streaming;
  PrefillParams params;
};

int32_t MostQueries(const PrefillProblem& pr) {
  int32_t most = 0;
  for (int32_t b = 0; b < pr.c.batch; ++b) {
    most = std::max(most, pr.q_indptr[b + 1] - pr.q_indptr[b]);
  }
  return most;
}

// GPU outputs vs the reference's (already in ref.o / ref.lse): per (query, query head) the
// normwise relative error of o within a few roundings of the storage type (P is rounded to it
// before PV on the tensor cores), lse within 1e-3, nothing NaN or unwritten.
void ExpectPrefillClose(const PrefillProblem& ref, const std::vector<uint16_t>& got,
                        const std::vector<float>& got_lse) {
  const int32_t dim = ref.c.head_dim;
  const double tol = ref.c.dtype == DType::kFloat16 ? 4e-3 : 2.5e-2;
  double worst = 0;
  for (size_t row = 0; row < size_t{1} * ref.total_q() * ref.qo_heads(); ++row) {
    double num = 0, den = 0;
    for (int32_t d = 0; d < dim; ++d) {
      const double r = testing::D(ref.o[row * dim + d], ref.c.dtype);
      const double g = testing::D(got[row * dim + d], ref.c.dtype);
      ASSERT_FALSE(std::isnan(g)) << "unwritten or NaN GPU output, row " << row << " d " << d;
      num += (g - r) * (g - r);
      den += r * r;
    }
    const double err = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
    worst = std::max(worst, err);
    ASSERT_LE(err, tol) << "row " << row;
    if (std::isinf(ref.lse[row])) {
      EXPECT_TRUE(std::isinf(got_lse[row]) && got_lse[row] < 0) << row;
    } else {
      ASSERT_NEAR(got_lse[row], ref.lse[row], 1e-3 * (1 + std::fabs(ref.lse[row]))) << row;
    }
  }
  ::testing::Test::RecordProperty("worst_rel_err", std::to_string(worst));
}

void RunPrefillCase(PrefillProblem& pr, int32_t tile_q) {
  DevPrefill dev(pr);
  ASSERT_TRUE(BlockSparsePrefillReference(pr.params()).ok());
  gpu::PrefillPlanOptions opt;
  opt.tile_q = tile_q;
  auto plan = gpu::PlanPrefill(dev.params, MostQueries(pr), opt);
  ASSERT_TRUE(plan.ok()) << plan.status();
  Dev<uint8_t> ws(plan->workspace_bytes);
  const absl::Status s = gpu::BlockSparsePrefill(*plan, dev.params, ws.get(), nullptr);
  ASSERT_TRUE(s.ok()) << s;
  CUDA_OK(cudaDeviceSynchronize());
  ExpectPrefillClose(pr, dev.o.Host(), dev.lse.Host());
}

// Plan once, capture the run in a CUDA graph, replay it over new queries and KV in the same
// buffers: the run only launches, so every replay sees the new data.
TEST_F(GpuTest, PrefillGraphReplaySeesNewData) {
  std::mt19937 rng(91);
  PrefillCase c;
  c.select = true;
  c.max_context = 500;
  c.min_chunk = 1;
  c.max_chunk = 200;
  PrefillProblem pr = testing::MakePrefillProblem(rng, c);
  DevPrefill dev(pr);
  auto plan = gpu::PlanPrefill(dev.params, MostQueries(pr));
  ASSERT_TRUE(plan.ok()) << plan.status();
  Dev<uint8_t> ws(plan->workspace_bytes);
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreate(&stream));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  ASSERT_TRUE(gpu::BlockSparsePrefill(*plan, dev.params, ws.get(), stream).ok());
  CUDA_OK(cudaStreamEndCapture(stream, &graph));
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  for (int rep = 0; rep < 3; ++rep) {
    pr.q = testing::RandomValues(rng, pr.q.size(), c.dtype, 0.5f);
    pr.pool.data = testing::RandomValues(rng, pr.pool.data.size(), c.dtype);
    std::fill(pr.o.begin(), pr.o.end(), kPoison);
    dev.q.Put(pr.q);
    dev.pool.Put(pr.pool.data);
    dev.o.Put(pr.o);
    CUDA_OK(cudaGraphLaunch(exec, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
    ASSERT_TRUE(BlockSparsePrefillReference(pr.params()).ok());
    ExpectPrefillClose(pr, dev.o.Host(), dev.lse.Host());
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

class GpuPrefill : public GpuTest,
                   public ::testing::WithParamInterface<std::tuple<DType, int, int, bool>> {};

TEST_P(GpuPrefill, MatchesReference) {
  const auto [dtype, dim, tile_q, select] = GetParam();
  std::mt19937 rng(dim + tile_q + (select ? 1 : 0) + static_cast<int>(dtype) * 3);
  PrefillCase c;
  c.dtype = dtype;
  c.head_dim = dim;
  c.group = 2;
  c.kv_heads = 3;
  c.batch = 3;
  c.max_context = 700;
  c.min_chunk = 1;
  c.max_chunk = 300;
  c.sink = 5;
  c.window = 100;
  c.select = select;
  PrefillProblem pr = testing::MakePrefillProblem(rng, c);
  RunPrefillCase(pr, tile_q);
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuPrefill,
                         ::testing::Combine(::testing::Values(DType::kFloat16, DType::kBFloat16),
                                            ::testing::Values(64, 128), ::testing::Values(64, 128),
                                            ::testing::Bool()));

class GpuPrefillMasks : public GpuTest,
                        public ::testing::WithParamInterface<std::tuple<int, int, int>> {};

// Page sizes 1 and 64, empty masks (sink = window = 0: zero output, lse -inf), sinks past the
// chunk, all-dense and all-streaming heads.
TEST_P(GpuPrefillMasks, MatchesReference) {
  const auto [page_size, sink, window] = GetParam();
  for (const std::vector<uint8_t>& heads :
       {std::vector<uint8_t>{1, 0}, std::vector<uint8_t>{0, 0}, std::vector<uint8_t>{1, 1}}) {
    std::mt19937 rng(page_size * 100 + sink + window);
    PrefillCase c;
    c.dtype = DType::kBFloat16;
    c.head_dim = 64;
    c.group = 4;
    c.kv_heads = 2;
    c.page_size = page_size;
    c.max_context = 400;
    c.min_chunk = 0;
    c.max_chunk = 200;
    c.sink = sink;
    c.window = window;
    c.streaming = heads;
    c.select = page_size != 1;
    PrefillProblem pr = testing::MakePrefillProblem(rng, c);
    RunPrefillCase(pr, 64);
  }
}

INSTANTIATE_TEST_SUITE_P(Masks, GpuPrefillMasks,
                         ::testing::Values(std::tuple{1, 4, 33}, std::tuple{64, 0, 0},
                                           std::tuple{16, 300, 1}, std::tuple{16, 64, 64}));

// A head-granular pool (the decode worker's) read through per-KV-head rows: the GPU against the
// reference, streaming and dense heads, with and without selected context pages.
TEST_F(GpuTest, PrefillPerKvHeadRowsMatchReference) {
  for (bool select : {false, true}) {
    std::mt19937 rng(select ? 51 : 50);
    PrefillCase c;
    c.head_dim = 128;
    c.group = 4;
    c.kv_heads = 3;
    c.max_context = 500;
    c.min_chunk = 1;
    c.max_chunk = 200;
    c.window = 64;
    c.select = select;
    PrefillProblem pr = testing::MakePrefillProblem(rng, c);
    const testing::HeadGranular g = testing::MakeHeadGranular(rng, pr);
    ASSERT_TRUE(BlockSparsePrefillReference(g.params(pr)).ok());
    DevPrefill dev(pr);
    Dev<uint16_t> pool(g.pool);
    Dev<int32_t> indptr(g.indptr), indices(g.indices), last(g.last);
    PrefillParams p = g.params(pr);
    p.kv.k = pool.get();
    p.kv.v = pool.get() + size_t{1} * c.page_size * c.head_dim;
    p.table.indptr = indptr.get();
    p.table.indices = indices.get();
    p.table.last_page_len = last.get();
    p.q_indptr = dev.params.q_indptr;
    p.q = dev.params.q;
    p.o = dev.params.o;
    p.lse = dev.params.lse;
    p.is_streaming = dev.params.is_streaming;
    p.select_indptr = dev.params.select_indptr;
    p.select_pages = dev.params.select_pages;
    auto plan = gpu::PlanPrefill(p, MostQueries(pr), {});
    ASSERT_TRUE(plan.ok()) << plan.status();
    Dev<uint8_t> ws(plan->workspace_bytes);
    ASSERT_TRUE(gpu::BlockSparsePrefill(*plan, p, ws.get(), nullptr).ok());
    CUDA_OK(cudaDeviceSynchronize());
    ExpectPrefillClose(pr, dev.o.Host(), dev.lse.Host());
  }
}

}  // namespace
}  // namespace pagoda::kernels
