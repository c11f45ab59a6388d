// GPU block-sparse prefill against its CPU reference: fp16/bf16, head_dim 64/128, tiles of 64 and
// 128 queries, streaming / dense / selected-page masks, awkward lengths, poisoned outputs.
// Needs a GPU (bench/gpu/run.sh runs it there); skips where none is visible.
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

// Runs the reference on the host and the kernel on the device, and compares: per (query, query
// head) the normwise relative error of o within a few roundings of the storage type (P is
// rounded to it before PV on the tensor cores), lse within 1e-3, nothing NaN or unwritten.
void RunPrefillCase(PrefillProblem& pr, int32_t tile_q) {
  Dev<uint16_t> pool(pr.pool.data), q(pr.q), o(pr.o);
  Dev<int32_t> indptr(pr.indptr), indices(pr.indices), last(pr.last), q_indptr(pr.q_indptr);
  Dev<int32_t> sel_indptr(pr.sel_indptr), sel_pages(pr.sel_pages);
  Dev<float> lse(pr.lse);
  Dev<uint8_t> streaming(pr.streaming_heads);
  ASSERT_TRUE(BlockSparsePrefillReference(pr.params()).ok());
  PrefillParams p = pr.params();
  p.kv.k = pool.get();
  p.kv.v = pool.get() + size_t{1} * pr.c.kv_heads * pr.c.page_size * pr.c.head_dim;
  p.table.indptr = indptr.get();
  p.table.indices = indices.get();
  p.table.last_page_len = last.get();
  p.q_indptr = q_indptr.get();
  p.q = q.get();
  p.o = o.get();
  p.lse = lse.get();
  p.is_streaming = streaming.get();
  if (pr.c.select) {
    p.select_indptr = sel_indptr.get();
    p.select_pages = sel_pages.get();
  }
  int32_t most = 0;
  for (int32_t b = 0; b < pr.c.batch; ++b) {
    most = std::max(most, pr.q_indptr[b + 1] - pr.q_indptr[b]);
  }
  gpu::PrefillPlanOptions opt;
  opt.tile_q = tile_q;
  auto plan = gpu::PlanPrefill(p, most, opt);
  ASSERT_TRUE(plan.ok()) << plan.status();
  Dev<uint8_t> ws(plan->workspace_bytes);
  const absl::Status s = gpu::BlockSparsePrefill(*plan, p, ws.get(), nullptr);
  ASSERT_TRUE(s.ok()) << s;
  CUDA_OK(cudaDeviceSynchronize());
  const auto got = o.Host();
  const auto got_lse = lse.Host();
  const int32_t dim = pr.c.head_dim;
  const double tol = pr.c.dtype == DType::kFloat16 ? 4e-3 : 2.5e-2;
  double worst = 0;
  for (size_t row = 0; row < size_t{1} * pr.total_q() * pr.qo_heads(); ++row) {
    double num = 0, den = 0;
    for (int32_t d = 0; d < dim; ++d) {
      const double r = testing::D(pr.o[row * dim + d], pr.c.dtype);
      const double g = testing::D(got[row * dim + d], pr.c.dtype);
      ASSERT_FALSE(std::isnan(g)) << "unwritten or NaN GPU output, row " << row << " d " << d;
      num += (g - r) * (g - r);
      den += r * r;
    }
    const double err = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
    worst = std::max(worst, err);
    ASSERT_LE(err, tol) << "row " << row;
    if (std::isinf(pr.lse[row])) {
      EXPECT_TRUE(std::isinf(got_lse[row]) && got_lse[row] < 0) << row;
    } else {
      ASSERT_NEAR(got_lse[row], pr.lse[row], 1e-3 * (1 + std::fabs(pr.lse[row]))) << row;
    }
  }
  ::testing::Test::RecordProperty("worst_rel_err", std::to_string(worst));
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

}  // namespace
}  // namespace pagoda::kernels
