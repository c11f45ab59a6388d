#include "prefill_trace.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "pagoda/kernels/reference.h"

namespace pagoda::bench {

using kernels::DType;

absl::StatusOr<TracePrefill> TracePrefill::Create(const TraceLayer& layer, int32_t page_size) {
  if (layer.v.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("trace ", layer.doc, " L", layer.layer, " has no V"));
  }
  if (page_size < 1) return absl::InvalidArgumentError("page_size must be >= 1");
  TracePrefill t;
  t.layer_ = layer;
  t.page_size_ = page_size;
  const int64_t T = layer.tokens, dim = layer.head_dim, kvh = layer.kv_heads;
  const int64_t pages = (T + page_size - 1) / page_size;
  const int64_t page_elems = 2 * kvh * page_size * dim;
  t.pool_.assign(pages * page_elems, 0);
  for (int64_t h = 0; h < kvh; ++h) {
    for (int64_t j = 0; j < T; ++j) {
      const int64_t p = j / page_size, s = j % page_size;
      uint16_t* kdst = &t.pool_[p * page_elems + (h * page_size + s) * dim];
      std::copy_n(&layer.k[(h * T + j) * dim], dim, kdst);
      std::copy_n(&layer.v[(h * T + j) * dim], dim, kdst + kvh * page_size * dim);
    }
  }
  const int64_t N = layer.queries, hq = layer.q_heads;
  t.q_rows_.resize(N * hq * dim);
  for (int64_t h = 0; h < hq; ++h) {
    for (int64_t i = 0; i < N; ++i) {
      std::copy_n(&layer.q[(h * N + i) * dim], dim, &t.q_rows_[(i * hq + h) * dim]);
    }
  }
  const int64_t full = T / page_size;
  t.page_min_.assign(full * kvh * dim, std::numeric_limits<float>::infinity());
  t.page_max_.assign(full * kvh * dim, -std::numeric_limits<float>::infinity());
  for (int64_t h = 0; h < kvh; ++h) {
    for (int64_t j = 0; j < full * page_size; ++j) {
      float* mn = &t.page_min_[((j / page_size) * kvh + h) * dim];
      float* mx = &t.page_max_[((j / page_size) * kvh + h) * dim];
      for (int64_t d = 0; d < dim; ++d) {
        const float x = kernels::HalfToFloat(layer.k[(h * T + j) * dim + d]);
        mn[d] = std::min(mn[d], x);
        mx[d] = std::max(mx[d], x);
      }
    }
  }
  return t;
}

void TracePrefill::Select(const PrefillMask& mask, int64_t a, int64_t b, int64_t context,
                          std::vector<int32_t>* indptr, std::vector<int32_t>* pages) const {
  const int64_t kvh = layer_.kv_heads, hq = layer_.q_heads, dim = layer_.head_dim;
  const int64_t group = hq / kvh;
  const int64_t ctx_pages = (context + page_size_ - 1) / page_size_;
  const int64_t budget = std::min<int64_t>(
      ctx_pages,
      static_cast<int64_t>(std::ceil(mask.select_fraction * static_cast<double>(ctx_pages))));
  const int64_t full = context / page_size_;  // candidates: full context pages
  const float scale = 1.f / std::sqrt(static_cast<float>(dim));
  indptr->assign(1, 0);
  pages->clear();
  std::vector<float> bound(full), score(full);
  std::vector<char> chosen(ctx_pages);
  std::vector<int32_t> order(full);
  for (int64_t h = 0; h < kvh; ++h) {
    std::fill(chosen.begin(), chosen.end(), 0);
    int64_t n = 0;
    auto take = [&](int64_t k) {
      if (k >= 0 && k < ctx_pages && !chosen[k] && n < budget) {
        chosen[k] = 1;
        ++n;
      }
    };
    take(0);
    for (int64_t r = 1; r <= mask.keep_recent; ++r) take(ctx_pages - r);
    std::fill(score.begin(), score.end(), 0.f);
    for (int64_t i = a; i < b && n < budget; ++i) {
      for (int64_t g = 0; g < group; ++g) {
        const uint16_t* q = &q_rows_[(i * hq + h * group + g) * dim];
        float qf[256];
        for (int64_t d = 0; d < dim; ++d) qf[d] = kernels::HalfToFloat(q[d]) * scale;
        float top = -std::numeric_limits<float>::infinity();
        for (int64_t k = 0; k < full; ++k) {
          const float* mn = &page_min_[(k * kvh + h) * dim];
          const float* mx = &page_max_[(k * kvh + h) * dim];
          float s = 0.f;
          for (int64_t d = 0; d < dim; ++d) s += std::max(qf[d] * mx[d], qf[d] * mn[d]);
          bound[k] = s;
          top = std::max(top, s);
        }
        float sum = 0.f;
        for (int64_t k = 0; k < full; ++k) sum += (bound[k] = std::exp(bound[k] - top));
        for (int64_t k = 0; k < full; ++k) score[k] += bound[k] / sum;
      }
    }
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t x, int32_t y) { return score[x] > score[y]; });
    for (int64_t k : order) take(k);
    for (int64_t k = 0; k < ctx_pages; ++k) {
      if (chosen[k]) pages->push_back(static_cast<int32_t>(k));
    }
    indptr->push_back(static_cast<int32_t>(pages->size()));
  }
}

absl::StatusOr<PrefillRun> TracePrefill::Run(const PrefillMask& mask, int64_t q_begin,
                                             int64_t q_end) const {
  const int64_t N = layer_.queries, hq = layer_.q_heads, dim = layer_.head_dim;
  const int64_t kvh = layer_.kv_heads;
  if (q_begin < 0 || q_end > N || q_begin > q_end || mask.chunk < 1) {
    return absl::InvalidArgumentError("prefill run: bad query range or chunk");
  }
  if (!mask.streaming.empty() && static_cast<int64_t>(mask.streaming.size()) != kvh) {
    return absl::InvalidArgumentError("prefill run: streaming flags must have kv_heads entries");
  }
  if (dim > 256) return absl::InvalidArgumentError("prefill run: head_dim above 256");
  PrefillRun run;
  run.queries = q_end - q_begin;
  run.q_heads = static_cast<int32_t>(hq);
  run.head_dim = static_cast<int32_t>(dim);
  run.o.resize(run.queries * hq * dim);
  run.lse.resize(run.queries * hq);
  const int64_t pages_total = (layer_.tokens + page_size_ - 1) / page_size_;
  std::vector<int32_t> ids(pages_total);
  std::iota(ids.begin(), ids.end(), 0);
  std::vector<uint16_t> o;
  std::vector<int32_t> sel_indptr, sel_pages;
  const std::vector<uint8_t> dense(kvh, 0);
  const std::vector<uint8_t>& flags = mask.streaming.empty() ? dense : mask.streaming;
  for (int64_t a = q_begin; a < q_end; a += mask.chunk) {
    const int64_t b = std::min(q_end, a + mask.chunk);
    const int64_t len = layer_.first_query() + b;  // the row ends at the chunk's last query
    const int64_t context = len - (b - a);
    const int32_t np = static_cast<int32_t>((len + page_size_ - 1) / page_size_);
    const int32_t indptr[2] = {0, np};
    const int32_t last = static_cast<int32_t>(len - int64_t{np - 1} * page_size_);
    const int32_t q_indptr[2] = {0, static_cast<int32_t>(b - a)};
    o.assign((b - a) * hq * dim, 0);
    kernels::PrefillParams p;
    p.kv =
        kernels::PackedPagedKV(DType::kFloat16, static_cast<int32_t>(pages_total), page_size_,
                               static_cast<int32_t>(kvh), static_cast<int32_t>(dim), pool_.data());
    p.table = {1, indptr, ids.data(), &last};
    p.batch = 1;
    p.num_qo_heads = static_cast<int32_t>(hq);
    p.q_indptr = q_indptr;
    p.q = &q_rows_[a * hq * dim];
    p.o = o.data();
    p.lse = &run.lse[(a - q_begin) * hq];
    p.is_streaming = flags.data();
    p.sink_tokens = mask.sink_tokens;
    p.window_tokens = mask.window_tokens;
    if (mask.select_fraction > 0) {
      Select(mask, a, b, context, &sel_indptr, &sel_pages);
      sel_pages.push_back(0);  // keeps data() non-null
      p.select_indptr = sel_indptr.data();
      p.select_pages = sel_pages.data();
    }
    if (absl::Status s = kernels::BlockSparsePrefillReference(p); !s.ok()) return s;
    for (size_t e = 0; e < o.size(); ++e) {
      run.o[(a - q_begin) * hq * dim + e] = kernels::HalfToFloat(o[e]);
    }
    // Keys attended, from the mask's definition (params.h).
    for (int64_t h = 0; h < kvh; ++h) {
      int64_t sel_keys = 0;
      if (mask.select_fraction > 0) {
        for (int32_t x = sel_indptr[h]; x < sel_indptr[h + 1]; ++x) {
          sel_keys += std::min<int64_t>(page_size_, context - int64_t{sel_pages[x]} * page_size_);
        }
      }
      for (int64_t t = context; t < len; ++t) {
        int64_t keys;
        if (flags[h]) {
          const int64_t sink = std::min<int64_t>(mask.sink_tokens, t + 1);
          keys = sink + (t + 1 - std::max<int64_t>(sink, t + 1 - mask.window_tokens));
        } else {
          keys = mask.select_fraction > 0 ? sel_keys + (t - context + 1) : t + 1;
        }
        run.keys_attended += keys * (hq / kvh);
      }
    }
  }
  return run;
}

std::vector<double> QueryErrors(const PrefillRun& want, const PrefillRun& got, int32_t hq_begin,
                                int32_t hq_end) {
  std::vector<double> err(want.queries);
  const int64_t dim = want.head_dim, hq = want.q_heads;
  for (int64_t i = 0; i < want.queries; ++i) {
    double num = 0, den = 0;
    for (int64_t e = (i * hq + hq_begin) * dim; e < (i * hq + hq_end) * dim; ++e) {
      const double d = static_cast<double>(got.o[e]) - want.o[e];
      num += d * d;
      den += static_cast<double>(want.o[e]) * want.o[e];
    }
    err[i] = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  }
  return err;
}

}  // namespace pagoda::bench
