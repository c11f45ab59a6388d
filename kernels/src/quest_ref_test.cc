#include <algorithm>
#include <cmath>
#include <random>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "pagoda/kernels/reference.h"
#include "quest_problem.h"

namespace pagoda::kernels {
namespace {

using testing::D;
using testing::MakeQuestProblem;
using testing::QuestCase;
using testing::QuestProblem;

// Float64 scores and the absolute error float accumulation may add, per (head, candidate).
void BruteScores(const QuestProblem& pr, std::vector<double>* score, std::vector<double>* tol) {
  const QuestCase& c = pr.c;
  const int32_t nc = pr.cand_indptr.back();
  const int32_t sub = c.page_size / c.sub_pages;
  score->assign(size_t{1} * c.kv_heads * nc, 0);
  tol->assign(score->size(), 0);
  for (int32_t b = 0; b < c.batch; ++b) {
    for (int32_t h = 0; h < c.kv_heads; ++h) {
      for (int32_t j = pr.cand_indptr[b]; j < pr.cand_indptr[b + 1]; ++j) {
        const int32_t page = pr.cand[j];
        double best = -INFINITY, mag = 0;
        for (int32_t s = 0; s * sub < pr.count[page] && s < c.sub_pages; ++s) {
          const size_t at = ((size_t{1} * page * c.sub_pages + s) * c.kv_heads + h) * c.head_dim;
          double agg = c.reduce == GroupReduce::kMax ? -INFINITY : 0;
          for (int32_t g = 0; g < c.group; ++g) {
            const size_t qa = (size_t{1} * b * c.kv_heads * c.group + h * c.group + g) * c.head_dim;
            double bound = 0;
            for (int32_t d = 0; d < c.head_dim; ++d) {
              const double q = D(pr.q[qa + d], c.dtype);
              const double t =
                  std::max(q * D(pr.smax[at + d], c.dtype), q * D(pr.smin[at + d], c.dtype));
              bound += t;
              mag += std::fabs(t);
            }
            agg = c.reduce == GroupReduce::kMax ? std::max(agg, bound) : agg + bound;
          }
          best = std::max(best, agg);
        }
        (*score)[size_t{1} * h * nc + j] = best;
        (*tol)[size_t{1} * h * nc + j] = 1e-6 * mag + 1e-6;
      }
    }
  }
}

// Checks the selection in `pr` given the scores it holds and float64 brute force.
void ExpectValidSelection(QuestProblem& pr) {
  const QuestCase& c = pr.c;
  std::vector<double> brute, tol;
  BruteScores(pr, &brute, &tol);
  const int32_t nc = pr.cand_indptr.back();
  for (size_t i = 0; i < brute.size(); ++i) {
    ASSERT_NEAR(pr.scores[i], brute[i], tol[i]) << "score " << i;
  }
  int32_t expect_at = 0;
  for (int32_t b = 0; b < c.batch; ++b) {
    const int32_t c0 = pr.cand_indptr[b], n = pr.cand_indptr[b + 1] - c0;
    const int32_t nkeep = pr.keep_indptr[b + 1] - pr.keep_indptr[b];
    const int32_t k = std::min(c.top_k, n);
    for (int32_t h = 0; h < c.kv_heads; ++h) {
      const int32_t row = b * c.kv_heads + h;
      ASSERT_EQ(pr.out_indptr[row], expect_at) << row;
      expect_at += k + nkeep;
      const int32_t* sel = &pr.out_indices[pr.out_indptr[row]];
      // Selected candidates in candidate order: map page -> position.
      std::vector<char> chosen(n, 0);
      int32_t prev = -1;
      for (int32_t i = 0; i < k; ++i) {
        const auto it = std::find(pr.cand.begin() + c0, pr.cand.begin() + c0 + n, sel[i]);
        ASSERT_NE(it, pr.cand.begin() + c0 + n) << "selected a non-candidate";
        const int32_t pos = static_cast<int32_t>(it - (pr.cand.begin() + c0));
        ASSERT_GT(pos, prev) << "not in candidate order";
        prev = pos;
        chosen[pos] = 1;
      }
      const float* sc = &pr.scores[size_t{1} * h * nc + c0];
      for (int32_t s = 0; s < n; ++s) {
        if (!chosen[s]) continue;
        for (int32_t u = 0; u < n; ++u) {
          if (chosen[u]) continue;
          ASSERT_TRUE(sc[s] > sc[u] || (sc[s] == sc[u] && s < u)) << "row " << row;
        }
      }
      for (int32_t i = 0; i < nkeep; ++i) ASSERT_EQ(sel[k + i], pr.keep[pr.keep_indptr[b] + i]);
      ASSERT_EQ(pr.out_last[row], nkeep > 0 ? pr.seq_last[b] : c.page_size);
    }
  }
  ASSERT_EQ(pr.out_indptr[c.batch * c.kv_heads], expect_at);
}

class QuestRef : public ::testing::TestWithParam<std::tuple<DType, int, int, int, GroupReduce>> {};

TEST_P(QuestRef, ScoresMatchFloat64AndSelectionIsTopK) {
  const auto [dtype, dim, group, subs, reduce] = GetParam();
  std::mt19937 rng(dim + group * 3 + subs * 100 + static_cast<int>(reduce));
  QuestCase c;
  c.dtype = dtype;
  c.head_dim = dim;
  c.group = group;
  c.sub_pages = subs;
  c.page_size = 16 * subs;
  c.reduce = reduce;
  QuestProblem pr = MakeQuestProblem(rng, c);
  ASSERT_TRUE(QuestSelectReference(pr.params()).ok());
  ExpectValidSelection(pr);
}

INSTANTIATE_TEST_SUITE_P(Shapes, QuestRef,
                         ::testing::Combine(::testing::Values(DType::kFloat16, DType::kBFloat16),
                                            ::testing::Values(64, 128),
                                            ::testing::Values(1, 2, 5, 8), ::testing::Values(1, 4),
                                            ::testing::Values(GroupReduce::kMax,
                                                              GroupReduce::kSum)));

TEST(QuestRefTest, TopKZeroAndTopKAboveCandidates) {
  for (int32_t k : {0, 1, 1000}) {
    std::mt19937 rng(k);
    QuestCase c;
    c.top_k = k;
    c.head_dim = 64;
    QuestProblem pr = MakeQuestProblem(rng, c);
    ASSERT_TRUE(QuestSelectReference(pr.params()).ok());
    ExpectValidSelection(pr);
  }
}

TEST(QuestRefTest, TiesGoToTheEarlierCandidate) {
  std::mt19937 rng(9);
  QuestCase c;
  c.batch = 1;
  c.kv_heads = 1;
  c.group = 1;
  c.head_dim = 64;
  c.pages_per_seq = 12;
  c.keep = 0;
  c.top_k = 3;
  QuestProblem pr = MakeQuestProblem(rng, c);
  // Every page gets the same summary: all scores tie.
  const size_t per = size_t{1} * c.head_dim;
  for (int32_t p = 1; p < pr.pool_pages; ++p) {
    std::copy_n(pr.smin.begin(), per, pr.smin.begin() + p * per);
    std::copy_n(pr.smax.begin(), per, pr.smax.begin() + p * per);
    pr.count[p] = pr.count[0] = c.page_size;
  }
  ASSERT_TRUE(QuestSelectReference(pr.params()).ok());
  const int32_t n = pr.cand_indptr[1];
  ASSERT_GE(n, 1);
  for (int32_t i = 0; i < std::min(3, n); ++i) EXPECT_EQ(pr.out_indices[i], pr.cand[i]);
}

TEST(QuestRefBadInput, RejectedWithoutWriting) {
  std::mt19937 rng(4);
  QuestCase c;
  c.head_dim = 64;
  c.batch = 3;
  c.pages_per_seq = 10;
  c.keep = 2;
  QuestProblem pr = MakeQuestProblem(rng, c);
  while (pr.keep_indptr[1] == 0 || pr.cand_indptr[1] < 2) pr = MakeQuestProblem(rng, c);
  const auto out0 = pr.out_indices;
  auto expect_bad = [&](const QuestParams& p, const char* what) {
    EXPECT_FALSE(QuestSelectReference(p).ok()) << what;
    EXPECT_EQ(pr.out_indices, out0) << what;
    EXPECT_TRUE(std::isnan(pr.scores[0])) << what;
  };
  auto p = pr.params();
  p.top_k = -1;
  expect_bad(p, "negative top_k");
  p = pr.params();
  p.num_qo_heads = c.kv_heads * c.group + 1;
  expect_bad(p, "heads");
  p = pr.params();
  p.page_size = 15;
  expect_bad(p, "page size");
  p = pr.params();
  p.reduce = static_cast<GroupReduce>(5);
  expect_bad(p, "reduce");
  auto cand = pr.cand;
  cand[0] = pr.keep[0];  // a kept page of sequence 0 also a candidate
  p = pr.params();
  p.cand_pages = cand.data();
  expect_bad(p, "kept page also a candidate");
  cand[0] = pr.pool_pages;
  expect_bad(p, "candidate out of range");
  auto count = pr.count;
  count[pr.cand[0]] = c.page_size + 1;
  p = pr.params();
  p.summaries.count = count.data();
  expect_bad(p, "corrupt count");
  auto last = pr.seq_last;
  last[0] = 0;
  p = pr.params();
  p.seq_last_page_len = last.data();
  expect_bad(p, "last page len");
  auto indptr = pr.keep_indptr;
  indptr[0] = 1;
  p = pr.params();
  p.keep_indptr = indptr.data();
  expect_bad(p, "indptr[0]");
}

}  // namespace
}  // namespace pagoda::kernels
