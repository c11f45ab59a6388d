#include "pagoda/retriever/store_index.h"

#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace pagoda::retriever {
namespace {

constexpr int kHeads = 2, kDim = 16;

PageKey Key(uint64_t doc, uint64_t page) { return PageKey{doc, page}; }

TEST(StoreIndexTest, FindsPagesOfOtherDocumentsAndForgetsRemovedOnes) {
  for (AnnKind kind : {AnnKind::kFlat, AnnKind::kIvf, AnnKind::kHnsw}) {
    StoreIndexOptions o;
    o.kv_heads = kHeads;
    o.index.kind = kind;
    o.index.dim = kDim;
    o.index.ivf_nlist = 1;  // one list: the first page trains it
    auto index = StoreIndex::Create(o);
    ASSERT_TRUE(index.ok());
    std::mt19937 rng(1);
    std::normal_distribution<float> g(0.f, 0.1f);
    // Three documents of 50 pages; document 2, page 17, head 1 holds the "fact".
    for (uint64_t doc = 0; doc < 3; ++doc) {
      for (uint64_t p = 0; p < 50; ++p) {
        std::vector<float> v(kHeads * kDim);
        for (float& x : v) x = g(rng);
        if (doc == 2 && p == 17) v[kDim + 5] = 5.f;
        ASSERT_TRUE((*index)->Add(Key(doc, p), v).ok());
      }
    }
    EXPECT_EQ((*index)->size(), 150);
    std::vector<float> q(kDim, 0.f);
    q[5] = 1.f;
    auto hits = (*index)->Search(1, q, 3);
    ASSERT_TRUE(hits.ok()) << hits.status();
    ASSERT_EQ(hits->size(), 3u);
    EXPECT_EQ((*hits)[0].key, Key(2, 17));
    // Head 0 has no such page.
    auto other = (*index)->Search(0, q, 1);
    ASSERT_TRUE(other.ok());
    EXPECT_NE((*other)[0].key, Key(2, 17));

    // The store drops the page: it must never be returned again.
    ASSERT_TRUE((*index)->Remove(Key(2, 17)).ok());
    EXPECT_FALSE((*index)->Contains(Key(2, 17)));
    hits = (*index)->Search(1, q, 150);
    ASSERT_TRUE(hits.ok());
    EXPECT_EQ(hits->size(), 149u);
    for (const StoreHit& h : *hits) EXPECT_NE(h.key, Key(2, 17));

    EXPECT_EQ((*index)->Remove(Key(2, 17)).code(), absl::StatusCode::kNotFound);
    std::vector<float> v(kHeads * kDim, 0.f);
    EXPECT_EQ((*index)->Add(Key(0, 0), v).code(), absl::StatusCode::kAlreadyExists);
    EXPECT_EQ((*index)->Add(Key(9, 9), std::vector<float>(kDim, 0.f)).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ((*index)->Search(2, q, 1).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ((*index)->size(), 149);
  }
}

TEST(StoreIndexTest, AddBatchIsAllOrNothing) {
  StoreIndexOptions o;
  o.kv_heads = kHeads;
  o.index.kind = AnnKind::kHnsw;
  o.index.dim = kDim;
  auto index = StoreIndex::Create(o);
  ASSERT_TRUE(index.ok());
  std::vector<float> v(3 * kHeads * kDim, 0.5f);
  v[kHeads * kDim + 2] = 9.f;  // page (5, 1), head 0
  const PageKey dup[3] = {Key(5, 0), Key(5, 1), Key(5, 0)};
  EXPECT_EQ((*index)->AddBatch(dup, v).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ((*index)->size(), 0);
  const PageKey keys[3] = {Key(5, 0), Key(5, 1), Key(5, 2)};
  EXPECT_EQ((*index)->AddBatch(keys, absl::MakeConstSpan(v).subspan(1)).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE((*index)->AddBatch(keys, v).ok());
  EXPECT_EQ((*index)->size(), 3);
  std::vector<float> q(kDim, 0.f);
  q[2] = 1.f;
  auto hits = (*index)->Search(0, q, 1);
  ASSERT_TRUE(hits.ok());
  EXPECT_EQ((*hits)[0].key, Key(5, 1));
  const PageKey again[1] = {Key(5, 2)};
  EXPECT_EQ((*index)->AddBatch(again, absl::MakeConstSpan(v).subspan(0, kHeads * kDim)).code(),
            absl::StatusCode::kAlreadyExists);
}

TEST(StoreIndexTest, TrainsIvfOnSamples) {
  StoreIndexOptions o;
  o.kv_heads = kHeads;
  o.index.kind = AnnKind::kIvf;
  o.index.dim = kDim;
  o.index.ivf_nprobe = 1;
  auto index = StoreIndex::Create(o);
  ASSERT_TRUE(index.ok());
  std::mt19937 rng(3);
  std::normal_distribution<float> g;
  std::vector<float> samples(400 * kHeads * kDim);
  for (float& x : samples) x = g(rng);
  EXPECT_EQ((*index)->Train(absl::MakeConstSpan(samples).subspan(1)).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE((*index)->Train(samples).ok());
  EXPECT_EQ((*index)->Train(samples).code(), absl::StatusCode::kFailedPrecondition);
  // Trained with several lists, nprobe 1 scans only part of the index.
  for (uint64_t p = 0; p < 400; ++p) {
    ASSERT_TRUE(
        (*index)
            ->Add(Key(1, p), absl::MakeConstSpan(samples).subspan(p * kHeads * kDim, kHeads * kDim))
            .ok());
  }
  std::vector<float> q(samples.begin(), samples.begin() + kDim);
  auto hits = (*index)->Search(0, q, 1);
  ASSERT_TRUE(hits.ok());
  ASSERT_EQ(hits->size(), 1u);
}

TEST(StoreIndexTest, ConcurrentAddRemoveSearch) {
  StoreIndexOptions o;
  o.kv_heads = 1;
  o.index.dim = kDim;
  auto index = StoreIndex::Create(o);
  ASSERT_TRUE(index.ok());
  std::vector<std::thread> threads;
  for (int w = 0; w < 4; ++w) {
    threads.emplace_back([&, w] {
      std::vector<float> v(kDim, static_cast<float>(w + 1));
      for (uint64_t p = 0; p < 200; ++p) {
        ASSERT_TRUE((*index)->Add(Key(w, p), v).ok());
        if (p % 2 == 0) {
          ASSERT_TRUE((*index)->Remove(Key(w, p)).ok());
        }
        ASSERT_TRUE((*index)->Search(0, v, 4).ok());
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ((*index)->size(), 400);
}

}  // namespace
}  // namespace pagoda::retriever
