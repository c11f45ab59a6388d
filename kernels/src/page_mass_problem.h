// Test problems for the exact page masses (PageMassParams), shared by the CPU reference's tests
// and the CUDA kernel's: a random packed pool, random rows of (page, length) entries, and the
// masses in float64 from first principles.
#ifndef PAGODA_KERNELS_SRC_PAGE_MASS_PROBLEM_H_
#define PAGODA_KERNELS_SRC_PAGE_MASS_PROBLEM_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "pagoda/kernels/params.h"
#include "test_util.h"

namespace pagoda::kernels::testing {

struct PageMassCase {
  DType dtype = DType::kBFloat16;
  int32_t batch = 2, kv_heads = 2, group = 4, head_dim = 64, page_size = 16, pool_pages = 24;
  int32_t max_entries = 12;  // per row (rows get 0 .. max_entries)
  GroupReduce reduce = GroupReduce::kSum;
  float q_scale = 1.f;  // query magnitude: larger makes the softmax sharper
};

struct PageMassProblem {
  PageMassCase c;
  Pool pool;
  std::vector<uint16_t> q;
  std::vector<int32_t> indptr, indices, page_len;
  std::vector<float> mass;
  PageMassParams params() {
    PageMassParams p;
    p.kv = pool.kv();
    p.batch = c.batch;
    p.num_qo_heads = c.kv_heads * c.group;
    p.q = q.data();
    p.indptr = indptr.data();
    p.indices = indices.data();
    p.page_len = page_len.data();
    p.reduce = c.reduce;
    p.mass = mass.data();
    return p;
  }
};

inline PageMassProblem MakePageMassProblem(const PageMassCase& c, uint32_t seed) {
  std::mt19937 rng(seed);
  PageMassProblem pr;
  pr.c = c;
  pr.pool = RandomPool(rng, c.dtype, c.pool_pages, c.page_size, c.kv_heads, c.head_dim);
  pr.q = RandomValues(rng, size_t{1} * c.batch * c.kv_heads * c.group * c.head_dim, c.dtype,
                      c.q_scale);
  std::uniform_int_distribution<int32_t> n_entries(0, c.max_entries);
  std::uniform_int_distribution<int32_t> page(0, c.pool_pages - 1);
  std::uniform_int_distribution<int32_t> len(1, c.page_size);
  pr.indptr.assign(1, 0);
  for (int32_t r = 0; r < c.batch * c.kv_heads; ++r) {
    const int32_t n = r == 0 ? std::max(1, n_entries(rng)) : n_entries(rng);
    for (int32_t e = 0; e < n; ++e) {
      pr.indices.push_back(page(rng));
      // Mostly full pages, a partial one now and then (anywhere in the row).
      pr.page_len.push_back(e % 3 == 2 ? len(rng) : c.page_size);
    }
    pr.indptr.push_back(static_cast<int32_t>(pr.indices.size()));
  }
  pr.mass.assign(std::max<size_t>(1, pr.indices.size()), -1.f);
  return pr;
}

// The problem's rows as the decode worker keeps them (PageMassParams::tails): each row's first
// entries listed, the rest (a random count) in a list of the row's own, full pages (their page_len
// in `pr` becomes page_size too, so the plain and the split forms are one problem).
struct SplitRows {
  std::vector<int32_t> listed = {0}, ids, len;
  std::vector<std::vector<int32_t>> tails;  // per row
  std::vector<const int32_t*> tail_ptrs;    // per row, null when it has no tail
  // pr.params() with the split form (pointers into this and pr).
  PageMassParams params(PageMassProblem& pr) {
    PageMassParams p = pr.params();
    p.indices = ids.data();
    p.page_len = len.data();
    p.listed = listed.data();
    p.tails = tail_ptrs.data();
    p.tail_len = pr.c.page_size;
    return p;
  }
};
inline SplitRows SplitIntoTails(PageMassProblem& pr, uint32_t seed) {
  std::mt19937 rng(seed);
  SplitRows s;
  const int32_t rows = static_cast<int32_t>(pr.indptr.size()) - 1;
  for (int32_t r = 0; r < rows; ++r) {
    const int32_t n = pr.indptr[r + 1] - pr.indptr[r];
    const int32_t listed = std::uniform_int_distribution<int32_t>(0, n)(rng);
    std::vector<int32_t>& tail = s.tails.emplace_back();
    for (int32_t e = pr.indptr[r]; e < pr.indptr[r + 1]; ++e) {
      if (e - pr.indptr[r] < listed) {
        s.ids.push_back(pr.indices[e]);
        s.len.push_back(pr.page_len[e]);
      } else {
        pr.page_len[e] = pr.c.page_size;
        tail.push_back(pr.indices[e]);
      }
    }
    s.listed.push_back(static_cast<int32_t>(s.ids.size()));
  }
  for (const std::vector<int32_t>& t : s.tails)
    s.tail_ptrs.push_back(t.empty() ? nullptr : t.data());
  if (s.ids.empty()) s.ids.push_back(0), s.len.push_back(1);  // non-null arrays, never read
  return s;
}

// The masses in float64 (sm_scale 1 / sqrt(head_dim)).
inline std::vector<double> BrutePageMass(const PageMassProblem& pr) {
  const PageMassCase& c = pr.c;
  const int d = c.head_dim;
  const PagedKV kv = pr.pool.kv();
  std::vector<double> mass(pr.indices.size(), 0.0);
  for (int32_t b = 0; b < c.batch; ++b) {
    for (int32_t h = 0; h < c.kv_heads; ++h) {
      const int32_t r = b * c.kv_heads + h;
      for (int g = 0; g < c.group; ++g) {
        const uint16_t* q = pr.q.data() + (int64_t{b} * c.kv_heads * c.group + h * c.group + g) * d;
        std::vector<std::vector<double>> l(pr.indptr[r + 1] - pr.indptr[r]);
        double top = -INFINITY;
        for (int32_t e = pr.indptr[r]; e < pr.indptr[r + 1]; ++e) {
          for (int32_t t = 0; t < pr.page_len[e]; ++t) {
            const uint16_t* k =
                kv.k + pr.indices[e] * kv.stride_page + h * kv.stride_head + t * kv.stride_token;
            double dot = 0;
            for (int j = 0; j < d; ++j) dot += D(q[j], c.dtype) * D(k[j], c.dtype);
            l[e - pr.indptr[r]].push_back(dot / std::sqrt(static_cast<double>(d)));
            top = std::max(top, l[e - pr.indptr[r]].back());
          }
        }
        double z = 0;
        for (const auto& v : l) {
          for (double x : v) z += std::exp(x - top);
        }
        for (int32_t e = pr.indptr[r]; e < pr.indptr[r + 1]; ++e) {
          double m = 0;
          for (double x : l[e - pr.indptr[r]]) m += std::exp(x - top);
          m /= z;
          mass[e] = c.reduce == GroupReduce::kMax ? std::max(mass[e], m) : mass[e] + m;
        }
      }
    }
  }
  return mass;
}

}  // namespace pagoda::kernels::testing

#endif  // PAGODA_KERNELS_SRC_PAGE_MASS_PROBLEM_H_
