// The CUDA choice from exact masses against the CPU reference on random problems.
#include <cstdint>
#include <vector>

#include "gpu_test_util.h"
#include "gtest/gtest.h"
#include "mass_select_problem.h"
#include "pagoda/kernels/cuda.h"
#include "pagoda/kernels/reference.h"

namespace pagoda::kernels {
namespace {

using testing::MakeMassSelectProblem;
using testing::MassSelectProblem;

TEST(MassSelectGpu, MatchesReference) {
  if (!HaveGpu()) GTEST_SKIP() << "no GPU";
  for (int levels : {0, 3, 50}) {  // ties at the threshold go to the earlier candidate
    for (uint32_t seed = 1; seed <= 4; ++seed) {
      SCOPED_TRACE(::testing::Message() << "levels " << levels << " seed " << seed);
      MassSelectProblem pr = MakeMassSelectProblem(40, 3000, levels, seed);
      ASSERT_TRUE(MassSelectReference(pr.params()).ok());
      Dev<int32_t> indptr(pr.indptr), keep(pr.keep), split(pr.split), need(pr.need);
      Dev<int32_t> values(pr.values), out_indptr(pr.out_indptr);
      Dev<float> mass(pr.mass);
      Dev<int32_t> out(pr.out.size()), out_entry(pr.out.size());
      MassSelectParams p = pr.params();
      p.indptr = indptr.get();
      p.keep = keep.get();
      p.split = split.get();
      p.need = need.get();
      p.mass = mass.get();
      p.values = values.get();
      p.out_indptr = out_indptr.get();
      p.out = out.get();
      p.out_entry = out_entry.get();
      ASSERT_TRUE(gpu::MassSelect(p, nullptr).ok());
      CUDA_OK(cudaDeviceSynchronize());
      EXPECT_EQ(out.Host(), pr.out);
      EXPECT_EQ(out_entry.Host(), pr.out_entry);
    }
  }
}

}  // namespace
}  // namespace pagoda::kernels
