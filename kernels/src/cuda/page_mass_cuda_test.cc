// The CUDA exact page masses against the CPU reference on random problems.
#include <cstdint>
#include <vector>

#include "gpu_test_util.h"
#include "gtest/gtest.h"
#include "page_mass_problem.h"
#include "pagoda/kernels/cuda.h"
#include "pagoda/kernels/reference.h"

namespace pagoda::kernels {
namespace {

using testing::MakePageMassProblem;
using testing::PageMassCase;
using testing::PageMassProblem;

void CheckPageMass(const PageMassCase& c, uint32_t seed) {
  PageMassProblem pr = MakePageMassProblem(c, seed);
  ASSERT_TRUE(PageMassReference(pr.params()).ok());
  const std::vector<float> want = pr.mass;
  Dev<uint16_t> pool(pr.pool.data), q(pr.q);
  Dev<int32_t> indptr(pr.indptr), indices(pr.indices), page_len(pr.page_len);
  Dev<float> mass(pr.mass.size());
  const int64_t entries = pr.indptr.back();
  Dev<uint8_t> ws(gpu::PageMassWorkspaceBytes(entries, c.group));
  PageMassParams p = pr.params();
  p.kv = PackedPagedKV(c.dtype, c.pool_pages, c.page_size, c.kv_heads, c.head_dim, pool.get());
  p.q = q.get();
  p.indptr = indptr.get();
  p.indices = indices.get();
  p.page_len = page_len.get();
  p.mass = mass.get();
  ASSERT_TRUE(gpu::PageMass(p, entries, ws.get(), nullptr).ok());
  CUDA_OK(cudaDeviceSynchronize());
  const std::vector<float> got = mass.Host();
  for (int64_t e = 0; e < entries; ++e) {
    EXPECT_NEAR(got[e], want[e], 2e-5 * c.group + 1e-3 * want[e]) << "entry " << e;
  }
}

TEST(PageMassGpu, MatchesReference) {
  if (!HaveGpu()) GTEST_SKIP() << "no GPU";
  uint32_t seed = 1;
  for (DType t : {DType::kBFloat16, DType::kFloat16}) {
    for (int d : {64, 128}) {
      for (int group : {1, 4, 8}) {
        for (GroupReduce reduce : {GroupReduce::kSum, GroupReduce::kMax}) {
          PageMassCase c;
          c.dtype = t;
          c.head_dim = d;
          c.group = group;
          c.reduce = reduce;
          c.q_scale = seed % 2 ? 0.5f : 2.f;
          SCOPED_TRACE(::testing::Message() << "d " << d << " group " << group << " seed " << seed);
          CheckPageMass(c, seed++);
        }
      }
    }
  }
  // Llama-3-8B shapes, a row of ~600 pages (louiskv's scored set at a 4K budget).
  PageMassCase big;
  big.batch = 2;
  big.kv_heads = 8;
  big.group = 4;
  big.head_dim = 128;
  big.pool_pages = 900;
  big.max_entries = 700;
  CheckPageMass(big, 77);
  // One sequence at 128K with louiskv's default rescoring (every resident page, ~1100 per row):
  // each row spread over many blocks.
  PageMassCase wide = big;
  wide.batch = 1;
  wide.pool_pages = 4096;
  wide.max_entries = 1100;
  CheckPageMass(wide, 78);
}

TEST(PageMassGpu, RejectsUnsupportedShapes) {
  PageMassCase c;
  c.head_dim = 96;
  PageMassProblem pr = MakePageMassProblem(c, 1);
  uint8_t ws[16];
  EXPECT_EQ(gpu::PageMass(pr.params(), 1, ws, nullptr).code(), absl::StatusCode::kInvalidArgument);
  PageMassCase wide;
  wide.group = 16;
  PageMassProblem pw = MakePageMassProblem(wide, 1);
  EXPECT_EQ(gpu::PageMass(pw.params(), 1, ws, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace pagoda::kernels
