// Random Quest selection problems (summaries of a random pool, candidates, kept pages) shared by
// the reference tests and the GPU tests.
#ifndef PAGODA_KERNELS_SRC_QUEST_PROBLEM_H_
#define PAGODA_KERNELS_SRC_QUEST_PROBLEM_H_

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "pagoda/kernels/params.h"
#include "pagoda/kernels/reference.h"
#include "test_util.h"

namespace pagoda::kernels::testing {

struct QuestCase {
  DType dtype = DType::kBFloat16;
  int32_t head_dim = 128;
  int32_t group = 4;
  int32_t kv_heads = 2;
  int32_t page_size = 16;
  int32_t sub_pages = 1;
  int32_t batch = 17;
  int32_t pages_per_seq = 40;  // each sequence owns this many pages of the pool
  int32_t keep = 3;            // always-kept pages per sequence (the last ones, partial last)
  int32_t top_k = 8;
  GroupReduce reduce = GroupReduce::kMax;
  // Fill min/max with random values (min <= max) instead of summarizing a random pool: same
  // scoring work, far less set-up for thousands of pages.
  bool direct_summaries = false;
};

struct QuestProblem {
  QuestCase c;
  int32_t pool_pages = 0;
  std::vector<uint16_t> q, smin, smax, smean;
  std::vector<int32_t> count, cand_indptr, cand, keep_indptr, keep, seq_last;
  std::vector<float> scores;
  std::vector<int32_t> out_indptr, out_indices, out_last;

  PageSummaries summaries() {
    return {c.dtype,     pool_pages,  c.sub_pages,  c.kv_heads,  c.head_dim,
            smin.data(), smax.data(), smean.data(), count.data()};
  }
  QuestParams params() {
    QuestParams p;
    p.batch = c.batch;
    p.num_qo_heads = c.kv_heads * c.group;
    p.q = q.data();
    p.summaries = summaries();
    p.page_size = c.page_size;
    p.cand_indptr = cand_indptr.data();
    p.cand_pages = cand.data();
    p.keep_indptr = keep_indptr.data();
    p.keep_pages = keep.data();
    p.seq_last_page_len = seq_last.data();
    p.top_k = c.top_k;
    p.reduce = c.reduce;
    p.scores = scores.data();
    p.out_indptr = out_indptr.data();
    p.out_indices = out_indices.data();
    p.out_last_page_len = out_last.data();
    return p;
  }
};

// Summarizes a random pool (pages shifted by random means so scores spread out) into pr.
inline void SummarizeRandomPool(std::mt19937& rng, const QuestCase& c,
                                const std::vector<int32_t>& ids, const std::vector<int32_t>& counts,
                                QuestProblem* pr) {
  Pool pool = RandomPool(rng, c.dtype, pr->pool_pages, c.page_size, c.kv_heads, c.head_dim);
  // Give pages different means so scores spread out.
  std::normal_distribution<float> shift(0.f, 0.5f);
  for (int32_t p = 0; p < pr->pool_pages; ++p) {
    const float s = shift(rng);
    for (size_t i = 0; i < pool.page_elems() / 2; ++i) {
      uint16_t& x = pool.data[p * pool.page_elems() + i];
      x = FromFloat(ToFloat(x, c.dtype) + s, c.dtype);
    }
  }
  SummaryUpdateParams up;
  up.kv = pool.kv();
  up.summaries = pr->summaries();
  up.num_updates = static_cast<int32_t>(ids.size());
  up.pages = ids.data();
  up.new_count = counts.data();
  (void)UpdateSummariesReference(up);
}

// Sequence b owns pool pages [b * pages_per_seq, (b+1) * pages_per_seq) in a shuffled order; its
// last `keep` pages are kept (the last partial), the others are candidates. Sequences vary in
// length so candidate counts differ (some below top_k).
inline QuestProblem MakeQuestProblem(std::mt19937& rng, const QuestCase& c) {
  QuestProblem pr;
  pr.c = c;
  pr.pool_pages = c.batch * c.pages_per_seq;
  const size_t n = size_t{1} * pr.pool_pages * c.sub_pages * c.kv_heads * c.head_dim;
  pr.smin.assign(n, 0);
  pr.smax.assign(n, 0);
  pr.smean.assign(n, 0);
  pr.count.assign(pr.pool_pages, 0);
  std::uniform_int_distribution<int32_t> len(1, c.pages_per_seq);
  std::uniform_int_distribution<int32_t> last(1, c.page_size);
  std::vector<int32_t> ids, counts;
  pr.cand_indptr = {0};
  pr.keep_indptr = {0};
  for (int32_t b = 0; b < c.batch; ++b) {
    const int32_t np = len(rng);
    std::vector<int32_t> own(c.pages_per_seq);
    std::iota(own.begin(), own.end(), b * c.pages_per_seq);
    std::shuffle(own.begin(), own.end(), rng);
    own.resize(np);
    const int32_t nkeep = std::min(np, c.keep);
    const int32_t lastlen = last(rng);
    for (int32_t i = 0; i < np; ++i) {
      ids.push_back(own[i]);
      counts.push_back(i == np - 1 ? lastlen : c.page_size);
      (i < np - nkeep ? pr.cand : pr.keep).push_back(own[i]);
    }
    pr.cand_indptr.push_back(static_cast<int32_t>(pr.cand.size()));
    pr.keep_indptr.push_back(static_cast<int32_t>(pr.keep.size()));
    pr.seq_last.push_back(lastlen);
  }
  if (c.direct_summaries) {
    std::normal_distribution<float> normal(0.f, 1.f);
    for (size_t i = 0; i < n; ++i) {
      const float a = normal(rng), w = std::fabs(normal(rng));
      pr.smin[i] = FromFloat(a - w, c.dtype);
      pr.smax[i] = FromFloat(a + w, c.dtype);
    }
    for (size_t i = 0; i < ids.size(); ++i) pr.count[ids[i]] = counts[i];
  } else {
    SummarizeRandomPool(rng, c, ids, counts, &pr);
  }
  pr.q = RandomValues(rng, size_t{1} * c.batch * c.kv_heads * c.group * c.head_dim, c.dtype);
  pr.cand.push_back(0);  // keep data() non-null when empty
  pr.keep.push_back(0);
  pr.scores.assign(size_t{1} * c.kv_heads * std::max(1, pr.cand_indptr.back()), NAN);
  pr.out_indptr.assign(size_t{1} * c.batch * c.kv_heads + 1, -7);
  pr.out_indices.assign(
      std::max<int64_t>(1, QuestOutputSize(c.batch, c.kv_heads, c.top_k, pr.cand_indptr.data(),
                                           pr.keep_indptr.data())),
      -7);
  pr.out_last.assign(size_t{1} * c.batch * c.kv_heads, -7);
  return pr;
}

}  // namespace pagoda::kernels::testing

#endif  // PAGODA_KERNELS_SRC_QUEST_PROBLEM_H_
