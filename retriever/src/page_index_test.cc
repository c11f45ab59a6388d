#include "pagoda/retriever/page_index.h"

#include <algorithm>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"

namespace pagoda::retriever {
namespace {

constexpr int kDim = 32;

std::vector<float> RandomVectors(int n, std::mt19937& rng) {
  std::normal_distribution<float> g;
  std::vector<float> v(static_cast<size_t>(n) * kDim);
  for (float& x : v) x = g(rng);
  return v;
}

// Exact top-k ids by inner product among live ids.
std::vector<int64_t> BruteForce(const std::vector<float>& vecs, const std::vector<int64_t>& ids,
                                const std::set<int64_t>& live, const float* q, int k) {
  std::vector<std::pair<float, int64_t>> all;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!live.count(ids[i])) continue;
    float dot = 0;
    for (int d = 0; d < kDim; ++d) dot += q[d] * vecs[i * kDim + d];
    all.push_back({-dot, ids[i]});
  }
  std::sort(all.begin(), all.end());
  std::vector<int64_t> out;
  for (int i = 0; i < k && i < static_cast<int>(all.size()); ++i) out.push_back(all[i].second);
  return out;
}

class PageIndexTest : public ::testing::TestWithParam<AnnKind> {};

TEST_P(PageIndexTest, AddRemoveSearchAgainstBruteForce) {
  std::mt19937 rng(42);
  PageIndexOptions o;
  o.kind = GetParam();
  o.dim = kDim;
  o.ivf_nprobe = 1000;  // probe every list: IVF must then be exact
  auto index = PageIndex::Create(o);
  ASSERT_TRUE(index.ok());
  const int n = 800;
  std::vector<float> vecs = RandomVectors(n, rng);
  std::vector<int64_t> ids(n);
  for (int i = 0; i < n; ++i) ids[i] = 1000 + 7 * i;  // sparse, non-contiguous ids
  ASSERT_TRUE((*index)->Add(ids, vecs).ok());
  EXPECT_EQ((*index)->size(), n);
  std::set<int64_t> live(ids.begin(), ids.end());

  auto check = [&](double min_recall) {
    const std::vector<float> queries = RandomVectors(30, rng);
    int hit = 0, total = 0;
    for (int qi = 0; qi < 30; ++qi) {
      const float* q = queries.data() + qi * kDim;
      auto got = (*index)->Search(absl::MakeConstSpan(q, kDim), 10);
      ASSERT_TRUE(got.ok()) << got.status();
      const std::vector<int64_t> want = BruteForce(vecs, ids, live, q, 10);
      ASSERT_EQ(got->hits.size(), want.size());
      for (const IndexHit& h : got->hits) {
        ASSERT_TRUE(live.count(h.id)) << "returned removed id " << h.id;
        hit += std::count(want.begin(), want.end(), h.id) > 0 ? 1 : 0;
      }
      for (size_t i = 1; i < got->hits.size(); ++i) {
        EXPECT_GE(got->hits[i - 1].score, got->hits[i].score);
      }
      total += static_cast<int>(want.size());
      EXPECT_GT(got->vectors_scanned, 0);
    }
    EXPECT_GE(static_cast<double>(hit) / total, min_recall);
  };
  const double recall = GetParam() == AnnKind::kHnsw ? 0.95 : 1.0;
  check(recall);

  // Remove 60% (crosses HNSW's compaction threshold) and search again.
  std::vector<int64_t> gone;
  for (int i = 0; i < n; ++i) {
    if (i % 5 < 3) gone.push_back(ids[i]);
  }
  ASSERT_TRUE((*index)->Remove(gone).ok());
  for (int64_t id : gone) live.erase(id);
  EXPECT_EQ((*index)->size(), static_cast<int64_t>(live.size()));
  EXPECT_FALSE((*index)->Contains(gone[0]));
  check(recall);

  // Re-adding a removed id works; its new vector is what counts.
  std::vector<float> again(kDim, 0.f);
  again[3] = 100.f;
  const int64_t back[1] = {gone[0]};
  ASSERT_TRUE((*index)->Add(back, again).ok());
  std::vector<float> q(kDim, 0.f);
  q[3] = 1.f;
  auto top = (*index)->Search(q, 1);
  ASSERT_TRUE(top.ok());
  ASSERT_EQ(top->hits.size(), 1u);
  EXPECT_EQ(top->hits[0].id, gone[0]);
  EXPECT_FLOAT_EQ(top->hits[0].score, 100.f);
}

TEST_P(PageIndexTest, BadInputChangesNothing) {
  std::mt19937 rng(3);
  PageIndexOptions o;
  o.kind = GetParam();
  o.dim = kDim;
  auto index = PageIndex::Create(o);
  ASSERT_TRUE(index.ok());
  std::vector<float> vecs = RandomVectors(100, rng);
  std::vector<int64_t> ids(100);
  for (int i = 0; i < 100; ++i) ids[i] = i;
  // Wrong size, duplicate ids in a batch, negative id, non-finite value.
  EXPECT_EQ((*index)->Add(ids, absl::MakeConstSpan(vecs).subspan(1)).code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<int64_t> dup = ids;
  dup[5] = dup[4];
  EXPECT_EQ((*index)->Add(dup, vecs).code(), absl::StatusCode::kAlreadyExists);
  std::vector<int64_t> neg = ids;
  neg[7] = -1;
  EXPECT_EQ((*index)->Add(neg, vecs).code(), absl::StatusCode::kInvalidArgument);
  std::vector<float> nan = vecs;
  nan[17] = std::nanf("");
  EXPECT_EQ((*index)->Add(ids, nan).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*index)->size(), 0);
  ASSERT_TRUE((*index)->Add(ids, vecs).ok());
  // Adding a live id again; removing an absent one (nothing removed, not even the present ones).
  const int64_t one[1] = {3};
  EXPECT_EQ((*index)->Add(one, absl::MakeConstSpan(vecs).subspan(0, kDim)).code(),
            absl::StatusCode::kAlreadyExists);
  const int64_t mixed[2] = {4, 5000};
  EXPECT_EQ((*index)->Remove(mixed).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE((*index)->Contains(4));
  EXPECT_EQ((*index)->size(), 100);
  std::vector<float> q(kDim - 1, 1.f);
  EXPECT_EQ((*index)->Search(q, 5).status().code(), absl::StatusCode::kInvalidArgument);
  q.push_back(1.f);
  EXPECT_EQ((*index)->Search(q, 0).status().code(), absl::StatusCode::kInvalidArgument);
  auto all = (*index)->Search(q, 500);  // more than it holds
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->hits.size(), 100u);
}

INSTANTIATE_TEST_SUITE_P(Kinds, PageIndexTest,
                         ::testing::Values(AnnKind::kFlat, AnnKind::kIvf, AnnKind::kHnsw));

TEST(PageIndexOptionsTest, RejectsBadOptions) {
  PageIndexOptions o;
  o.dim = 0;
  EXPECT_FALSE(PageIndex::Create(o).ok());
  o = PageIndexOptions();
  o.hnsw_compact_fraction = 0;
  EXPECT_FALSE(PageIndex::Create(o).ok());
  o = PageIndexOptions();
  o.kind = AnnKind::kIvf;
  o.ivf_nlist = 50;
  auto index = PageIndex::Create(o);
  ASSERT_TRUE(index.ok());
  std::vector<float> few(10 * 64, 1.f);
  EXPECT_FALSE((*index)->Train(few).ok());  // fewer points than lists
  EXPECT_FALSE((*index)->trained());
}

}  // namespace
}  // namespace pagoda::retriever
