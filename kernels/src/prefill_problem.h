// Random block-sparse prefill problems (paged pool, CSR table, ragged query chunks, per-KV-head
// masks) and a float64 brute-force attention that tests every key against the mask's definition
// in params.h. Shared by the reference tests and the GPU tests.
#ifndef PAGODA_KERNELS_SRC_PREFILL_PROBLEM_H_
#define PAGODA_KERNELS_SRC_PREFILL_PROBLEM_H_

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "decode_problem.h"
#include "pagoda/kernels/params.h"
#include "test_util.h"

namespace pagoda::kernels::testing {

struct PrefillCase {
  DType dtype = DType::kBFloat16;
  int32_t head_dim = 64;
  int32_t group = 3;  // query heads per KV head
  int32_t kv_heads = 2;
  int32_t page_size = 16;
  int32_t batch = 3;
  int32_t max_context = 97;  // per sequence, drawn in [0, max_context]
  int32_t min_chunk = 0;     // query tokens per sequence, drawn in [min_chunk, max_chunk]
  int32_t max_chunk = 75;
  std::vector<uint8_t> streaming;  // [kv_heads]; empty: every other head, starting with head 0
  bool select = false;             // random context-page selections for the dense heads
  int32_t sink = 4, window = 19;
};

struct PrefillProblem {
  PrefillCase c;
  Pool pool;
  std::vector<int32_t> indptr, indices, last;
  std::vector<int32_t> q_indptr, context;  // context[b] = c_b
  std::vector<int32_t> sel_indptr, sel_pages;
  std::vector<uint16_t> q, o;
  std::vector<float> lse;
  std::vector<uint8_t> streaming_heads;

  int32_t qo_heads() const { return c.kv_heads * c.group; }
  int32_t total_q() const { return q_indptr.back(); }

  PrefillParams params() {
    PrefillParams p;
    p.kv = pool.kv();
    p.table = {c.batch, indptr.data(), indices.data(), last.data()};
    p.batch = c.batch;
    p.num_qo_heads = qo_heads();
    p.q_indptr = q_indptr.data();
    p.q = q.data();
    p.o = o.data();
    p.lse = lse.data();
    p.is_streaming = streaming_heads.data();
    p.sink_tokens = c.sink;
    p.window_tokens = c.window;
    if (c.select) {
      p.select_indptr = sel_indptr.data();
      p.select_pages = sel_pages.data();
    }
    return p;
  }
};

inline PrefillProblem MakePrefillProblem(std::mt19937& rng, const PrefillCase& c) {
  PrefillProblem pr;
  pr.c = c;
  std::uniform_int_distribution<int32_t> ctx(0, c.max_context);
  std::uniform_int_distribution<int32_t> chunk(c.min_chunk, c.max_chunk);
  std::vector<int32_t> lens;
  pr.q_indptr.push_back(0);
  int32_t total_pages = 0;
  for (int32_t b = 0; b < c.batch; ++b) {
    const int32_t n = chunk(rng), cb = ctx(rng);
    pr.context.push_back(cb);
    pr.q_indptr.push_back(pr.q_indptr.back() + n);
    lens.push_back(cb + n);
    total_pages += (cb + n + c.page_size - 1) / c.page_size;
  }
  const int32_t pool_pages = total_pages + 5;
  pr.pool = RandomPool(rng, c.dtype, pool_pages, c.page_size, c.kv_heads, c.head_dim);
  // Each sequence gets distinct pages, in a shuffled order (the table, not the pool, orders them).
  std::vector<int32_t> perm(pool_pages);
  for (int32_t i = 0; i < pool_pages; ++i) perm[i] = i;
  std::shuffle(perm.begin(), perm.end(), rng);
  pr.indptr.push_back(0);
  int32_t next = 0;
  for (int32_t b = 0; b < c.batch; ++b) {
    const int32_t np = (lens[b] + c.page_size - 1) / c.page_size;
    for (int32_t i = 0; i < np; ++i) pr.indices.push_back(perm[next++]);
    pr.indptr.push_back(static_cast<int32_t>(pr.indices.size()));
    pr.last.push_back(np == 0 ? c.page_size : lens[b] - (np - 1) * c.page_size);
  }
  pr.indices.push_back(0);  // keeps data() non-null
  pr.streaming_heads = c.streaming;
  if (pr.streaming_heads.empty()) {
    for (int32_t h = 0; h < c.kv_heads; ++h) pr.streaming_heads.push_back(h % 2 == 0 ? 1 : 0);
  }
  std::bernoulli_distribution coin(0.5);
  pr.sel_indptr.push_back(0);
  for (int32_t b = 0; b < c.batch; ++b) {
    const int32_t ctx_pages = (pr.context[b] + c.page_size - 1) / c.page_size;
    for (int32_t h = 0; h < c.kv_heads; ++h) {
      for (int32_t k = 0; k < ctx_pages; ++k) {
        if (coin(rng)) pr.sel_pages.push_back(k);
      }
      pr.sel_indptr.push_back(static_cast<int32_t>(pr.sel_pages.size()));
    }
  }
  pr.sel_pages.push_back(0);
  const size_t rows = size_t{1} * pr.total_q() * pr.qo_heads();
  pr.q = RandomValues(rng, std::max<size_t>(rows, 1) * c.head_dim, c.dtype,
                      1.5f / std::sqrt(std::sqrt(static_cast<float>(c.head_dim))));
  pr.o.assign(pr.q.size(), kPoison);
  pr.lse.assign(std::max<size_t>(rows, 1), std::nanf(""));
  return pr;
}

// Whether query position t of sequence b, KV head h keeps key j (params.h, key by key).
inline bool PrefillKeeps(const PrefillProblem& pr, int32_t b, int32_t h, int64_t t, int64_t j) {
  if (j > t) return false;
  if (pr.streaming_heads[h]) return j < pr.c.sink || j > t - pr.c.window;
  if (!pr.c.select || j >= pr.context[b]) return true;
  const int32_t r = b * pr.c.kv_heads + h;
  const int32_t page = static_cast<int32_t>(j / pr.c.page_size);
  return std::find(pr.sel_pages.begin() + pr.sel_indptr[r],
                   pr.sel_pages.begin() + pr.sel_indptr[r + 1],
                   page) != pr.sel_pages.begin() + pr.sel_indptr[r + 1];
}

// The problem's K/V moved into a head-granular pool (the decode worker's layout: head h of every
// page in its own slot of head h's sub-pool, `spare` extra slots per head) with a per-KV-head
// table: each (sequence, head) row lists its own slots, in a different shuffled order per head,
// so a kernel reading head h through another head's row reads other bytes. params() of the
// result is the same attention as the problem's.
struct HeadGranular {
  std::vector<uint16_t> pool;  // [heads][slots][K page_size x dim | V page_size x dim]
  int32_t slots = 0;
  std::vector<int32_t> indptr, indices, last;

  PrefillParams params(PrefillProblem& pr) const {
    PrefillParams p = pr.params();
    const int64_t half = int64_t{pr.c.page_size} * pr.c.head_dim;
    p.kv.num_pages = slots;
    p.kv.k = pool.data();
    p.kv.v = pool.data() + half;
    p.kv.stride_token = pr.c.head_dim;
    p.kv.stride_page = 2 * half;
    p.kv.stride_head = int64_t{slots} * 2 * half;
    p.table = {pr.c.batch * pr.c.kv_heads, indptr.data(), indices.data(), last.data()};
    p.per_kv_head = true;
    return p;
  }
};

inline HeadGranular MakeHeadGranular(std::mt19937& rng, const PrefillProblem& pr,
                                     int32_t spare = 3) {
  const PrefillCase& c = pr.c;
  HeadGranular g;
  g.slots = pr.pool.pages + spare;
  const int64_t half = int64_t{c.page_size} * c.head_dim;
  g.pool.assign(static_cast<size_t>(c.kv_heads) * g.slots * 2 * half, 0x7e00);  // NaN poison
  std::vector<std::vector<int32_t>> perm(c.kv_heads, std::vector<int32_t>(g.slots));
  for (auto& p : perm) {
    for (int32_t i = 0; i < g.slots; ++i) p[i] = i;
    std::shuffle(p.begin(), p.end(), rng);
  }
  const PagedKV src = pr.pool.kv();
  g.indptr.push_back(0);
  for (int32_t b = 0; b < c.batch; ++b) {
    for (int32_t h = 0; h < c.kv_heads; ++h) {
      for (int32_t i = pr.indptr[b]; i < pr.indptr[b + 1]; ++i) {
        const int32_t page = pr.indices[i], slot = perm[h][page];
        uint16_t* dst = g.pool.data() + (int64_t{h} * g.slots + slot) * 2 * half;
        std::copy_n(src.k + page * src.stride_page + h * src.stride_head, half, dst);
        std::copy_n(src.v + page * src.stride_page + h * src.stride_head, half, dst + half);
        g.indices.push_back(slot);
      }
      g.indptr.push_back(static_cast<int32_t>(g.indices.size()));
      g.last.push_back(pr.last[b]);
    }
  }
  g.indices.push_back(0);  // keeps data() non-null
  return g;
}

// Float64 attention over exactly the kept keys: o then lse, per (query row, query head).
inline BruteResult BrutePrefill(const PrefillProblem& pr) {
  const PrefillCase& c = pr.c;
  const int32_t dim = c.head_dim;
  const PagedKV kv = pr.pool.kv();
  BruteResult r;
  r.o.assign(size_t{1} * pr.total_q() * pr.qo_heads() * dim, 0.0);
  r.lse.assign(size_t{1} * pr.total_q() * pr.qo_heads(), 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(dim));
  for (int32_t b = 0; b < c.batch; ++b) {
    const int32_t n = pr.q_indptr[b + 1] - pr.q_indptr[b];
    auto at = [&](const uint16_t* base, int32_t h, int64_t j) {
      const int32_t pg = pr.indices[pr.indptr[b] + j / c.page_size];
      return base + pg * kv.stride_page + h * kv.stride_head + (j % c.page_size) * kv.stride_token;
    };
    for (int32_t i = 0; i < n; ++i) {
      const int64_t t = pr.context[b] + i;
      for (int32_t hq = 0; hq < pr.qo_heads(); ++hq) {
        const int32_t h = hq / c.group;
        const size_t out = size_t{1} * (pr.q_indptr[b] + i) * pr.qo_heads() + hq;
        const uint16_t* q = pr.q.data() + out * dim;
        std::vector<int64_t> keys;
        std::vector<double> logit;
        for (int64_t j = 0; j <= t; ++j) {
          if (!PrefillKeeps(pr, b, h, t, j)) continue;
          const uint16_t* k = at(kv.k, h, j);
          double s = 0;
          for (int32_t d = 0; d < dim; ++d) s += D(q[d], c.dtype) * D(k[d], c.dtype);
          keys.push_back(j);
          logit.push_back(s * scale);
        }
        if (keys.empty()) {
          r.lse[out] = -std::numeric_limits<double>::infinity();
          continue;
        }
        const double m = *std::max_element(logit.begin(), logit.end());
        double sum = 0;
        for (double& l : logit) sum += (l = std::exp(l - m));
        for (size_t x = 0; x < keys.size(); ++x) {
          const uint16_t* v = at(kv.v, h, keys[x]);
          for (int32_t d = 0; d < dim; ++d) r.o[out * dim + d] += logit[x] * D(v[d], c.dtype);
        }
        for (int32_t d = 0; d < dim; ++d) r.o[out * dim + d] /= sum;
        r.lse[out] = m + std::log(sum);
      }
    }
  }
  return r;
}

}  // namespace pagoda::kernels::testing

#endif  // PAGODA_KERNELS_SRC_PREFILL_PROBLEM_H_
