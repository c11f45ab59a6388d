// One sparse decode step on the GPU the way DecodeSession runs it, on synthetic Llama-3-8B-like
// shapes (32 query heads, 8 KV heads, head_dim 128, bf16, 16-token pages), batch 1, 32K and 128K
// contexts, a 4096-token budget per KV head (1 sink + 254 retrieved + the open page).
//
// The host tier is a pinned host buffer holding every page; the GPU pool holds 2x the pages of one
// step (LRU slots). A step: selection (Quest score + top-k on the GPU over page summaries), copy
// of the selected page ids to the host, pool lookup, host gather of the missing pages into one
// pinned staging buffer, ONE host-to-device copy + one scatter kernel into their slots, then the
// sparse decode kernel over the pool. Queries follow a "topic" that changes every 5 steps; the
// "every step" rows retrieve every step, the "1 in 5" rows reuse the selection between topic
// changes (the rate the LouisKV trigger is calibrated to). Baseline in the same run: dense decode
// over the whole context resident on the GPU (the same kernel, every page). Times are means over
// steps of host wall time with a stream sync after each phase.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "pagoda/kernels/cuda.h"
#include "pagoda/kernels/dtype.h"
#include "pagoda/kernels/params.h"

namespace pk = pagoda::kernels;
namespace gpu = pagoda::kernels::gpu;

#define CK(x)                                                                         \
  do {                                                                                \
    cudaError_t e_ = (x);                                                             \
    if (e_ != cudaSuccess) {                                                          \
      std::fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
      std::exit(1);                                                                   \
    }                                                                                 \
  } while (0)
#define OK(x)                                                                        \
  do {                                                                               \
    absl::Status s_ = (x);                                                           \
    if (!s_.ok()) {                                                                  \
      std::fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, s_.ToString().c_str()); \
      std::exit(1);                                                                  \
    }                                                                                \
  } while (0)

namespace {

constexpr int kQo = 32, kKv = 8, kDim = 128, kPage = 16, kBudget = 4096;
constexpr int64_t kPageElems = 2LL * kKv * kPage * kDim;
constexpr int64_t kPageBytes = kPageElems * 2;

using Clock = std::chrono::steady_clock;
double Us(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::micro>(b - a).count();
}

template <typename T>
T* Dev(size_t n) {
  T* p = nullptr;
  CK(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)));
  return p;
}

struct Result {
  double select = 0, transfer = 0, host = 0, attn = 0, fetched_pages = 0;
};

void Run(int64_t ctx, cudaStream_t st) {
  const int32_t pages = static_cast<int32_t>(ctx / kPage);  // full pages; the last is "open"
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.f, 1.f);
  // Host tier: every page, pinned.
  uint16_t* host = nullptr;
  CK(cudaMallocHost(&host, pages * kPageBytes));
  for (int64_t i = 0; i < pages * kPageElems; ++i) {
    host[i] =
        pk::FloatToBf16(static_cast<float>(static_cast<int32_t>(rng() % 2001) - 1000) / 1000.f);
  }
  uint16_t* full = Dev<uint16_t>(pages * kPageElems);  // dense baseline + summaries source
  CK(cudaMemcpy(full, host, pages * kPageBytes, cudaMemcpyHostToDevice));
  const pk::PagedKV full_kv =
      pk::PackedPagedKV(pk::DType::kBFloat16, pages, kPage, kKv, kDim, full);

  // Summaries of every page (min/max/mean per KV head).
  pk::PageSummaries sum;
  sum.dtype = pk::DType::kBFloat16;
  sum.num_pages = pages;
  sum.num_kv_heads = kKv;
  sum.head_dim = kDim;
  sum.min = Dev<uint16_t>(size_t(pages) * kKv * kDim);
  sum.max = Dev<uint16_t>(size_t(pages) * kKv * kDim);
  sum.mean = Dev<uint16_t>(size_t(pages) * kKv * kDim);
  sum.count = Dev<int32_t>(pages);
  CK(cudaMemset(sum.count, 0, pages * 4));
  {
    std::vector<int32_t> ids(pages), cnt(pages, kPage);
    for (int i = 0; i < pages; ++i) ids[i] = i;
    int32_t* d_ids = Dev<int32_t>(pages);
    int32_t* d_cnt = Dev<int32_t>(pages);
    CK(cudaMemcpy(d_ids, ids.data(), pages * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_cnt, cnt.data(), pages * 4, cudaMemcpyHostToDevice));
    pk::SummaryUpdateParams up;
    up.kv = full_kv;
    up.summaries = sum;
    up.num_updates = pages;
    up.pages = d_ids;
    up.new_count = d_cnt;
    OK(gpu::UpdateSummaries(up, st));
    CK(cudaStreamSynchronize(st));
  }

  // Quest: candidates 1 .. pages-2, kept: sink 0 and the open page pages-1.
  const int32_t top_k = kBudget / kPage - 2;
  std::vector<int32_t> cand_indptr{0, pages - 2}, cand(pages - 2), keep_indptr{0, 2},
      keep{0, pages - 1}, last{kPage};
  for (int i = 0; i < pages - 2; ++i) cand[i] = i + 1;
  auto up = [&](const std::vector<int32_t>& v) {
    int32_t* d = Dev<int32_t>(v.size());
    CK(cudaMemcpy(d, v.data(), v.size() * 4, cudaMemcpyHostToDevice));
    return d;
  };
  uint16_t* d_q = Dev<uint16_t>(kQo * kDim);
  uint16_t* d_o = Dev<uint16_t>(kQo * kDim);
  pk::QuestParams qp;
  qp.batch = 1;
  qp.num_qo_heads = kQo;
  qp.q = d_q;
  qp.summaries = sum;
  qp.page_size = kPage;
  qp.cand_indptr = up(cand_indptr);
  qp.cand_pages = up(cand);
  qp.keep_indptr = up(keep_indptr);
  qp.keep_pages = up(keep);
  qp.seq_last_page_len = up(last);
  qp.top_k = top_k;
  qp.reduce = pk::GroupReduce::kSum;
  qp.scores = Dev<float>(size_t(kKv) * (pages - 2));
  qp.out_indptr = Dev<int32_t>(kKv + 1);
  const int64_t n_out = int64_t{kKv} * (std::min(top_k, pages - 2) + 2);  // selected + kept
  qp.out_indices = Dev<int32_t>(n_out);
  qp.out_last_page_len = Dev<int32_t>(kKv);
  auto qplan = gpu::PlanQuest(qp, pages - 2);
  OK(qplan.status());
  void* qws = Dev<uint8_t>(qplan->workspace_bytes);

  // GPU pool: 2 x one step's pages.
  const int32_t slots = 2 * kKv * (top_k + 2);
  uint16_t* pool = Dev<uint16_t>(size_t(slots) * kPageElems);
  uint8_t* staging = nullptr;
  CK(cudaMallocHost(&staging, size_t(slots) * kPageBytes));
  uint8_t* d_staging = Dev<uint8_t>(size_t(slots) * kPageBytes);
  int32_t* d_slots = Dev<int32_t>(slots);
  int32_t* d_table = Dev<int32_t>(n_out);
  int32_t* d_indptr = qp.out_indptr;  // rows keep the selector's CSR, ids remapped to slots
  int32_t* d_last = qp.out_last_page_len;
  const pk::PagedKV pool_kv =
      pk::PackedPagedKV(pk::DType::kBFloat16, slots, kPage, kKv, kDim, pool);

  pk::DecodeParams sp;
  sp.kv = pool_kv;
  sp.table = {kKv, d_indptr, d_table, d_last};
  sp.batch = 1;
  sp.num_qo_heads = kQo;
  sp.q = d_q;
  sp.o = d_o;
  auto splan = gpu::PlanDecode(sp, false, kBudget);
  OK(splan.status());
  void* sws = Dev<uint8_t>(splan->workspace_bytes);

  // Dense baseline over every page resident.
  std::vector<int32_t> all(size_t(kKv) * pages), dptr(kKv + 1), dlast(kKv, kPage);
  for (int h = 0; h <= kKv; ++h) dptr[h] = h * pages;
  for (int h = 0; h < kKv; ++h) {
    for (int p = 0; p < pages; ++p) all[size_t(h) * pages + p] = p;
  }
  pk::DecodeParams dp = sp;
  dp.kv = full_kv;
  dp.table = {kKv, up(dptr), up(all), up(dlast)};
  auto dplan = gpu::PlanDecode(dp, false, ctx);
  OK(dplan.status());
  void* dws = Dev<uint8_t>(dplan->workspace_bytes);
  for (int i = 0; i < 5; ++i) OK(gpu::SparseDecode(*dplan, dp, dws, st));
  CK(cudaStreamSynchronize(st));
  const int dense_reps = 50;
  auto d0 = Clock::now();
  for (int i = 0; i < dense_reps; ++i) {
    OK(gpu::SparseDecode(*dplan, dp, dws, st));
    CK(cudaStreamSynchronize(st));
  }
  const double dense_us = Us(d0, Clock::now()) / dense_reps;

  for (int reuse : {1, 5}) {
    std::vector<int32_t> slot_of(pages, -1), page_of(slots, -1);
    std::vector<int64_t> used(slots, -1);
    std::vector<int32_t> sel(n_out), table(n_out);
    std::vector<float> base(kQo * kDim);
    std::vector<uint16_t> q(kQo * kDim);
    Result r;
    const int steps = 60, warm = 10;
    for (int s = 0; s < steps + warm; ++s) {
      if (s % 5 == 0) {
        for (float& b : base) b = nd(rng);
      }
      for (int i = 0; i < kQo * kDim; ++i) q[i] = pk::FloatToBf16(base[i] + 0.1f * nd(rng));
      CK(cudaMemcpyAsync(d_q, q.data(), q.size() * 2, cudaMemcpyHostToDevice, st));
      CK(cudaStreamSynchronize(st));
      auto t0 = Clock::now();
      const bool retrieve = s % reuse == 0;
      if (retrieve) {
        OK(gpu::QuestSelect(*qplan, qp, qws, st));
        CK(cudaMemcpyAsync(sel.data(), qp.out_indices, n_out * 4, cudaMemcpyDeviceToHost, st));
        CK(cudaStreamSynchronize(st));
      }
      auto t1 = Clock::now();
      int32_t fetched = 0;
      auto th = t1;  // end of the host part of the transfer (pool lookup + gather)
      if (retrieve) {
        for (int32_t p : sel) {
          if (slot_of[p] >= 0) used[slot_of[p]] = s;
        }
        std::vector<int32_t> dst;
        // Victims in LRU order among the slots this step does not use (one sort per step).
        std::vector<int32_t> free_slots;
        for (int32_t k = 0; k < slots; ++k) {
          if (used[k] != s) free_slots.push_back(k);
        }
        std::sort(free_slots.begin(), free_slots.end(),
                  [&](int32_t a, int32_t b) { return used[a] < used[b]; });
        size_t next_free = 0;
        for (int32_t p : sel) {
          if (slot_of[p] >= 0) continue;
          const int32_t best = free_slots[next_free++];
          if (page_of[best] >= 0) slot_of[page_of[best]] = -1;
          slot_of[p] = best;
          page_of[best] = p;
          used[best] = s;
          std::memcpy(staging + size_t(fetched) * kPageBytes, host + p * kPageElems, kPageBytes);
          dst.push_back(best);
          ++fetched;
        }
        for (int64_t i = 0; i < n_out; ++i) table[i] = slot_of[sel[i]];
        th = Clock::now();
        if (fetched > 0) {
          CK(cudaMemcpyAsync(d_staging, staging, size_t(fetched) * kPageBytes,
                             cudaMemcpyHostToDevice, st));
          CK(cudaMemcpyAsync(d_slots, dst.data(), fetched * 4, cudaMemcpyHostToDevice, st));
          pk::PageCopyParams cp;
          cp.pool = reinterpret_cast<uint8_t*>(pool);
          cp.pool_pages = slots;
          cp.pool_stride_bytes = kPageBytes;
          cp.page_bytes = kPageBytes;
          cp.pages = d_slots;
          cp.num_pages = fetched;
          cp.staging = d_staging;
          OK(gpu::ScatterPages(cp, st));
        }
        CK(cudaMemcpyAsync(d_table, table.data(), n_out * 4, cudaMemcpyHostToDevice, st));
        CK(cudaStreamSynchronize(st));
      }
      auto t2 = Clock::now();
      if (!retrieve) th = t2;
      OK(gpu::SparseDecode(*splan, sp, sws, st));
      CK(cudaStreamSynchronize(st));
      auto t3 = Clock::now();
      if (s >= warm) {
        r.select += Us(t0, t1);
        r.transfer += Us(t1, t2);
        r.host += Us(t1, th);
        r.attn += Us(t2, t3);
        r.fetched_pages += fetched;
      }
    }
    const double n = steps;
    const double total = (r.select + r.transfer + r.attn) / n;
    std::printf(
        "| %ldK | %s | %.1f | %.1f (host %.1f) | %.1f | %.1f | %.1f | %.0f | %.1f | %.3f |\n",
        static_cast<long>(ctx / 1024), reuse == 1 ? "every step" : "1 in 5", r.select / n,
        r.transfer / n, r.host / n, r.attn / n, total, r.fetched_pages / n,
        r.fetched_pages / n * kPageBytes / 1024, dense_us, total / dense_us);
    std::fflush(stdout);
  }
  CK(cudaFreeHost(host));
  CK(cudaFreeHost(staging));
}

}  // namespace

int main() {
  cudaStream_t st;
  CK(cudaStreamCreate(&st));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s; B=1, 32 qo / 8 kv heads, d=128, bf16, 16-token pages, budget %d\n",
              prop.name, kBudget);
  std::printf(
      "| ctx | retrieval | select us | transfer us | attention us | step us | pages fetched | "
      "KiB H2D | dense us | step/dense |\n|---|---|---|---|---|---|---|---|---|---|\n");
  for (int64_t ctx : {32768LL, 131072LL}) Run(ctx, st);
  return 0;
}
