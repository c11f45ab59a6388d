#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "pagoda/kernels/reference.h"
#include "test_util.h"

namespace pagoda::kernels {
namespace {

using testing::D;

struct KMeansProblem {
  testing::Pool pool;
  std::vector<int32_t> pages;
  int32_t tokens, clusters;
  std::vector<float> cent;
  std::vector<int32_t> assign, size;
  KMeansParams params() {
    KMeansParams p;
    p.kv = pool.kv();
    p.pages = pages.data();
    p.num_tokens = tokens;
    p.num_clusters = clusters;
    p.centroids = cent.data();
    p.assignment = assign.data();
    p.cluster_size = size.data();
    return p;
  }
  double Key(int32_t h, int32_t t, int32_t d) const {
    const PagedKV kv = pool.kv();
    return D(kv.k[pages[t / kv.page_size] * kv.stride_page + h * kv.stride_head +
                  (t % kv.page_size) * kv.stride_token + d],
             kv.dtype);
  }
};

KMeansProblem Make(std::mt19937& rng, DType t, int32_t dim, int32_t ps, int32_t tokens,
                   int32_t clusters, int32_t heads = 2) {
  const int32_t np = (tokens + ps - 1) / ps;
  KMeansProblem pr{
      testing::RandomPool(rng, t, np + 5, ps, heads, dim), {}, tokens, clusters, {}, {}, {}};
  pr.pages.resize(np);
  std::iota(pr.pages.begin(), pr.pages.end(), 3);
  std::shuffle(pr.pages.begin(), pr.pages.end(), rng);
  pr.cent.assign(size_t{1} * heads * clusters * dim, 0);
  pr.assign.assign(size_t{1} * heads * tokens, -1);
  pr.size.assign(size_t{1} * heads * clusters, -1);
  return pr;
}

double Dist(const KMeansProblem& pr, int32_t h, int32_t t, int32_t c) {
  const int32_t dim = pr.pool.dim;
  double s = 0;
  for (int32_t d = 0; d < dim; ++d) {
    const double e = pr.Key(h, t, d) - pr.cent[(size_t{1} * h * pr.clusters + c) * dim + d];
    s += e * e;
  }
  return s;
}

class KMeansRef : public ::testing::TestWithParam<std::tuple<DType, int, int>> {};

TEST_P(KMeansRef, AssignUpdateAndLloydDescent) {
  const auto [dtype, dim, ps] = GetParam();
  std::mt19937 rng(dim + ps);
  KMeansProblem pr = Make(rng, dtype, dim, ps, 97, 7);
  ASSERT_TRUE(KMeansInitReference(pr.params()).ok());
  for (int32_t h = 0; h < 2; ++h) {  // init: centroid c is token floor(c * n / C)
    for (int32_t c = 0; c < 7; ++c) {
      for (int32_t d = 0; d < dim; ++d) {
        ASSERT_EQ(pr.cent[(size_t{1} * h * 7 + c) * dim + d], pr.Key(h, c * 97 / 7, d));
      }
    }
  }
  double prev_obj = INFINITY;
  for (int it = 0; it < 5; ++it) {
    ASSERT_TRUE(KMeansAssignReference(pr.params()).ok());
    double obj = 0;
    for (int32_t h = 0; h < 2; ++h) {
      for (int32_t t = 0; t < 97; ++t) {
        const int32_t a = pr.assign[h * 97 + t];
        ASSERT_GE(a, 0);
        ASSERT_LT(a, 7);
        const double da = Dist(pr, h, t, a);
        for (int32_t c = 0; c < 7; ++c) ASSERT_LE(da, Dist(pr, h, t, c) * (1 + 1e-5) + 1e-5);
        obj += da;
      }
    }
    EXPECT_LE(obj, prev_obj * (1 + 1e-6)) << "Lloyd iterations never increase the objective";
    prev_obj = obj;
    const auto old = pr.cent;
    ASSERT_TRUE(KMeansUpdateReference(pr.params()).ok());
    for (int32_t h = 0; h < 2; ++h) {
      for (int32_t c = 0; c < 7; ++c) {
        int32_t n = 0;
        std::vector<double> mean(dim, 0);
        for (int32_t t = 0; t < 97; ++t) {
          if (pr.assign[h * 97 + t] != c) continue;
          ++n;
          for (int32_t d = 0; d < dim; ++d) mean[d] += pr.Key(h, t, d);
        }
        ASSERT_EQ(pr.size[h * 7 + c], n);
        for (int32_t d = 0; d < dim; ++d) {
          const size_t at = (size_t{1} * h * 7 + c) * dim + d;
          const double want = n ? mean[d] / n : old[at];
          ASSERT_NEAR(pr.cent[at], want, 1e-6 * (1 + std::fabs(want)));
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, KMeansRef,
                         ::testing::Combine(::testing::Values(DType::kFloat16, DType::kBFloat16),
                                            ::testing::Values(64, 128), ::testing::Values(1, 16)));

TEST(KMeansRefTest, EmptyClusterKeepsItsCentroidAndRunEndsAssigned) {
  std::mt19937 rng(8);
  KMeansProblem pr = Make(rng, DType::kBFloat16, 64, 16, 50, 4, 1);
  ASSERT_TRUE(KMeansInitReference(pr.params()).ok());
  std::fill_n(pr.cent.begin() + 3 * 64, 64, 1000.f);  // far from every key
  ASSERT_TRUE(KMeansReference(pr.params(), 3).ok());
  EXPECT_EQ(pr.size[3], 0);
  for (int d = 0; d < 64; ++d) EXPECT_EQ(pr.cent[3 * 64 + d], 1000.f);
  const auto assign = pr.assign;
  ASSERT_TRUE(KMeansAssignReference(pr.params()).ok());
  EXPECT_EQ(pr.assign, assign) << "final assignment matches the returned centroids";
}

TEST(KMeansRefBadInput, Rejected) {
  std::mt19937 rng(8);
  KMeansProblem pr = Make(rng, DType::kFloat16, 64, 16, 40, 4);
  auto p = pr.params();
  p.num_clusters = 41;
  EXPECT_FALSE(KMeansInitReference(p).ok());
  p = pr.params();
  p.centroids = nullptr;
  EXPECT_FALSE(KMeansAssignReference(p).ok());
  auto pages = pr.pages;
  pages[1] = pr.pool.pages;
  p = pr.params();
  p.pages = pages.data();
  EXPECT_EQ(KMeansAssignReference(p).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(pr.assign, std::vector<int32_t>(pr.assign.size(), -1)) << "nothing written";
  pr.assign.assign(pr.assign.size(), 9);
  const auto cent = pr.cent;
  EXPECT_EQ(KMeansUpdateReference(pr.params()).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(pr.cent, cent);
  EXPECT_FALSE(KMeansReference(pr.params(), -1).ok());
}

}  // namespace
}  // namespace pagoda::kernels
