// Random decode-attention problems (paged pool + CSR table + queries) and a float64 brute-force
// attention, shared by the reference tests and the GPU tests.
#ifndef PAGODA_KERNELS_SRC_DECODE_PROBLEM_H_
#define PAGODA_KERNELS_SRC_DECODE_PROBLEM_H_

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "pagoda/kernels/params.h"
#include "test_util.h"

namespace pagoda::kernels::testing {

// A 16-bit pattern that is NaN as fp16 and as bf16: outputs start as this to catch unwritten ones.
inline constexpr uint16_t kPoison = 0x7fc1;

struct DecodeCase {
  DType dtype = DType::kBFloat16;
  int32_t head_dim = 128;
  int32_t group = 4;  // query heads per KV head
  int32_t kv_heads = 2;
  int32_t page_size = 16;
  int32_t batch = 17;
  int32_t max_pages = 8;  // per row
  int32_t pool_pages = 64;
  bool per_kv_head = true;
  bool allow_empty_rows = true;
  bool streaming = false;  // one row per sequence, some heads streaming
};

struct DecodeProblem {
  DecodeCase c;
  Pool pool;
  std::vector<int32_t> indptr, indices, last;
  std::vector<uint16_t> q, o;
  std::vector<float> lse;
  std::vector<uint8_t> streaming_heads;
  int32_t sink = 0, window = 0;

  int32_t rows() const { return (c.per_kv_head && !c.streaming) ? c.batch * c.kv_heads : c.batch; }
  int32_t qo_heads() const { return c.kv_heads * c.group; }

  DecodeParams params() {
    DecodeParams p;
    p.kv = pool.kv();
    p.table = {rows(), indptr.data(), indices.data(), last.data()};
    p.batch = c.batch;
    p.num_qo_heads = qo_heads();
    p.per_kv_head = c.per_kv_head;
    p.q = q.data();
    p.o = o.data();
    p.lse = lse.data();
    p.is_streaming = streaming_heads.data();
    p.sink_tokens = sink;
    p.window_tokens = window;
    return p;
  }
};

inline DecodeProblem MakeDecodeProblem(std::mt19937& rng, const DecodeCase& c) {
  DecodeProblem pr;
  pr.c = c;
  pr.pool = RandomPool(rng, c.dtype, c.pool_pages, c.page_size, c.kv_heads, c.head_dim);
  std::uniform_int_distribution<int32_t> npages(c.allow_empty_rows ? 0 : 1, c.max_pages);
  std::uniform_int_distribution<int32_t> page(0, c.pool_pages - 1);
  std::uniform_int_distribution<int32_t> last(1, c.page_size);
  pr.indptr.push_back(0);
  for (int32_t r = 0; r < pr.rows(); ++r) {
    const int32_t n = npages(rng);
    for (int32_t i = 0; i < n; ++i) pr.indices.push_back(page(rng));
    pr.indptr.push_back(static_cast<int32_t>(pr.indices.size()));
    pr.last.push_back(last(rng));
  }
  pr.indices.push_back(0);  // keeps data() non-null for an all-empty table
  // Queries scaled so softmax is neither flat nor one-hot.
  pr.q = RandomValues(rng, size_t{1} * c.batch * pr.qo_heads() * c.head_dim, c.dtype,
                      1.5f / std::sqrt(std::sqrt(static_cast<float>(c.head_dim))));
  pr.o.assign(pr.q.size(), kPoison);
  pr.lse.assign(size_t{1} * c.batch * pr.qo_heads(), std::nanf(""));
  pr.streaming_heads.resize(c.kv_heads);
  for (int32_t h = 0; h < c.kv_heads; ++h) pr.streaming_heads[h] = (h % 2 == 0) ? 1 : 0;
  return pr;
}

// Float64 attention over exactly the tokens the definition selects. Returns o then lse, per
// (sequence, query head); rows skipped in streaming mode (non-streaming heads) get NaN.
struct BruteResult {
  std::vector<double> o, lse;
};

inline BruteResult BruteDecode(const DecodeProblem& pr) {
  const DecodeCase& c = pr.c;
  const int32_t dim = c.head_dim;
  BruteResult r;
  r.o.assign(size_t{1} * c.batch * pr.qo_heads() * dim, std::nan(""));
  r.lse.assign(size_t{1} * c.batch * pr.qo_heads(), std::nan(""));
  const double scale = 1.0 / std::sqrt(static_cast<double>(dim));
  const PagedKV kv = pr.pool.kv();
  for (int32_t b = 0; b < c.batch; ++b) {
    for (int32_t hq = 0; hq < pr.qo_heads(); ++hq) {
      const int32_t h = hq / c.group;
      if (c.streaming && !pr.streaming_heads[h]) continue;
      const int32_t row = (c.per_kv_head && !c.streaming) ? b * c.kv_heads + h : b;
      const int32_t np = pr.indptr[row + 1] - pr.indptr[row];
      const int64_t len = np == 0 ? 0 : int64_t{np - 1} * c.page_size + pr.last[row];
      std::vector<int64_t> toks;
      for (int64_t t = 0; t < len; ++t) {
        if (!c.streaming || t < pr.sink || t >= len - pr.window) toks.push_back(t);
      }
      const uint16_t* q = pr.q.data() + (int64_t{b} * pr.qo_heads() + hq) * dim;
      std::vector<double> logit;
      for (int64_t t : toks) {
        const int32_t pg = pr.indices[pr.indptr[row] + t / c.page_size];
        const uint16_t* k =
            kv.k + pg * kv.stride_page + h * kv.stride_head + (t % c.page_size) * kv.stride_token;
        double s = 0;
        for (int32_t d = 0; d < dim; ++d) s += D(q[d], c.dtype) * D(k[d], c.dtype);
        logit.push_back(s * scale);
      }
      const size_t out = size_t{1} * b * pr.qo_heads() + hq;
      if (toks.empty()) {
        for (int32_t d = 0; d < dim; ++d) r.o[out * dim + d] = 0;
        r.lse[out] = -std::numeric_limits<double>::infinity();
        continue;
      }
      const double m = *std::max_element(logit.begin(), logit.end());
      double sum = 0;
      for (double& l : logit) sum += (l = std::exp(l - m));
      for (int32_t d = 0; d < dim; ++d) {
        double acc = 0;
        for (size_t i = 0; i < toks.size(); ++i) {
          const int64_t t = toks[i];
          const int32_t pg = pr.indices[pr.indptr[row] + t / c.page_size];
          const uint16_t* v =
              kv.v + pg * kv.stride_page + h * kv.stride_head + (t % c.page_size) * kv.stride_token;
          acc += logit[i] * D(v[d], c.dtype);
        }
        r.o[out * dim + d] = acc / sum;
      }
      r.lse[out] = m + std::log(sum);
    }
  }
  return r;
}

}  // namespace pagoda::kernels::testing

#endif  // PAGODA_KERNELS_SRC_DECODE_PROBLEM_H_
