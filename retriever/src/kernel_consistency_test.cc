// The page tables the selectors return, run through the kernels' sparse decode reference, must
// attend exactly the tokens the selection's spans name — in the natural layout and in the
// boundary policy's cluster-ordered layout.
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "pagoda/kernels/reference.h"
#include "pagoda/retriever/prompt_clusters.h"
#include "pagoda/retriever/selector.h"
#include "test_data.h"

namespace pagoda::retriever {
namespace {

using test_data::Half;

constexpr int kKv = 4, kHq = 12, kDim = 64;

// fp16 pool in the store's packed page layout; slot j of page p, head h holds position
// position_of(h, p * P + j) (or zeros past the end).
template <typename F>
std::vector<uint16_t> BuildPool(const test_data::NeedleData& data, const std::vector<float>& values,
                                int64_t tokens, int P, F position_of) {
  const int64_t pages = (tokens + P - 1) / P;
  std::vector<uint16_t> pool(pages * 2 * kKv * P * kDim, 0);
  for (int64_t p = 0; p < pages; ++p) {
    for (int h = 0; h < kKv; ++h) {
      for (int j = 0; j < P && p * P + j < tokens; ++j) {
        const int64_t pos = position_of(h, p * P + j);
        for (int d = 0; d < kDim; ++d) {
          const int64_t src = (h * data.tokens + pos) * kDim + d;
          const int64_t k_at = ((p * 2 * kKv + h) * P + j) * kDim + d;
          pool[k_at] = Half(data.keys[src]);
          pool[k_at + kKv * P * kDim] = Half(values[src]);
        }
      }
    }
  }
  return pool;
}

void ExpectKernelMatchesSpans(const test_data::NeedleData& data, const std::vector<float>& values,
                              const std::vector<uint16_t>& pool, int P, const Selection& sel,
                              const std::vector<uint16_t>& q) {
  const int32_t pages = static_cast<int32_t>(pool.size() / (2 * kKv * P * kDim));
  kernels::DecodeParams p;
  p.kv = kernels::PackedPagedKV(kernels::DType::kFloat16, pages, P, kKv, kDim, pool.data());
  p.table = AsKernelTable(sel.pages);
  p.batch = 1;
  p.num_qo_heads = kHq;
  p.per_kv_head = true;
  p.q = q.data();
  std::vector<uint16_t> o(kHq * kDim);
  p.o = o.data();
  ASSERT_TRUE(kernels::SparseDecodeReference(p).ok());
  for (int hq = 0; hq < kHq; ++hq) {
    const int h = hq / (kHq / kKv);
    // Expected: attention over exactly the span tokens, in double from the fp16 inputs.
    std::vector<double> logits;
    std::vector<int64_t> pos;
    for (const TokenSpan& s : sel.spans[h]) {
      for (int64_t t = s.begin; t < s.end; ++t) {
        double dot = 0;
        for (int d = 0; d < kDim; ++d) {
          dot += kernels::HalfToFloat(q[hq * kDim + d]) *
                 kernels::HalfToFloat(Half(data.keys[(h * data.tokens + t) * kDim + d]));
        }
        logits.push_back(dot / std::sqrt(double{kDim}));
        pos.push_back(t);
      }
    }
    double m = -INFINITY, z = 0;
    for (double l : logits) m = std::max(m, l);
    std::vector<double> out(kDim, 0.0);
    for (size_t i = 0; i < logits.size(); ++i) {
      const double w = std::exp(logits[i] - m);
      z += w;
      for (int d = 0; d < kDim; ++d) {
        out[d] += w * kernels::HalfToFloat(Half(values[(h * data.tokens + pos[i]) * kDim + d]));
      }
    }
    for (int d = 0; d < kDim; ++d) {
      EXPECT_NEAR(kernels::HalfToFloat(o[hq * kDim + d]), out[d] / z,
                  2e-3 + 2e-3 * std::fabs(out[d] / z))
          << "head " << hq << " dim " << d;
    }
  }
}

TEST(KernelConsistencyTest, PageTablesAttendExactlyTheirSpans) {
  const int64_t n = 1000;  // not a multiple of any page size: the last page is partial
  test_data::NeedleData data(n, 320, 16, 13);
  std::mt19937 rng(2);
  std::normal_distribution<float> g;
  std::vector<float> values(data.keys.size());
  for (float& v : values) v = g(rng);
  const std::vector<uint16_t> q = data.Query(2.f, 0.5f);
  for (int P : {16, 64}) {
    for (Policy policy : {Policy::kQuest, Policy::kHierarchical, Policy::kAnn, Policy::kStreaming,
                          Policy::kBoundary}) {
      SCOPED_TRACE(std::string(PolicyName(policy)) + " P=" + std::to_string(P));
      SelectorOptions o;
      o.page_tokens = P;
      o.budget_tokens = 4 * P;
      std::shared_ptr<const PromptClusters> clusters;
      absl::StatusOr<std::unique_ptr<Selector>> sel;
      if (policy == Policy::kBoundary) {
        auto c = ClusterPrompt(o, data.Keys(0, n - 3), n - 3);
        ASSERT_TRUE(c.ok());
        clusters = *c;
        sel = MakeBoundarySelector(o, clusters);
      } else {
        sel = MakeSelector(policy, o);
      }
      ASSERT_TRUE(sel.ok());
      ASSERT_TRUE((*sel)->Prefill(data.Keys(0, n - 3), n - 3).ok());
      ASSERT_TRUE((*sel)->Append(data.Keys(n - 3, n), 3).ok());
      auto s = (*sel)->Select(q);
      ASSERT_TRUE(s.ok()) << s.status();
      const std::vector<uint16_t> pool =
          clusters ? BuildPool(data, values, n, P,
                               [&](int h, int64_t l) { return LayoutPosition(*clusters, h, l); })
                   : BuildPool(data, values, n, P, [](int, int64_t l) { return l; });
      ExpectKernelMatchesSpans(data, values, pool, P, *s, q);
    }
  }
}

}  // namespace
}  // namespace pagoda::retriever
