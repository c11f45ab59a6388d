// One sparse decode step on the GPU the way DecodeSession runs it, on synthetic Llama-3-8B-like
// shapes (32 query heads, 8 KV heads, head_dim 128, bf16, 16-token pages), batch 1, 32K and 128K
// contexts, a 4096-token budget per KV head (1 sink + 254 retrieved + the open page).
//
// The host tier is a pinned host buffer holding every page in the store's packed layout (all KV
// heads of 16 tokens in one 64 KiB page). A step: selection (Quest score + top-k on the GPU over
// page summaries), the selected ids to the host, pool lookup, fetch of the missing pages, then the
// sparse decode kernel over the pool. Two fetch paths, run on the same queries:
//   staged: the GPU pool holds whole packed pages (2x one step's pages, LRU); the host copies each
//           missing page into one pinned staging buffer, then ONE host-to-device copy + one scatter
//           kernel place them. A page chosen by one KV head moves all eight heads' bytes.
//   direct: the GPU pool holds one KV head's 16 tokens per slot (8 KiB: K then V), a region of
//           slots per KV head (the same HBM bytes as the staged pool; clock eviction), addressed
//           through PagedKV's strides (no kernel change). The host only builds a (page, head, slot)
//           list; one gather kernel reads the missing head-pages straight out of the pinned host
//           tier over PCIe (no staging memcpy, no copy-engine op). A page chosen by one KV head
//           moves only that head's 8 KiB.
// Both paths are checked to give bit-identical outputs at every step.
// Queries follow a "topic" that changes every 5 steps; "every step" retrieves every step, "1 in 5"
// reuses the selection between topic changes (the rate the LouisKV trigger is calibrated to).
// Baselines in the same run: dense decode over the whole context resident in HBM (the same
// kernel, every page) and dense decode over the context left in the pinned host tier (the same
// kernel reading host memory over PCIe: what dense decode costs when the KV does not fit on the
// GPU). Times are means over steps of host wall time with a stream sync after each phase.
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
constexpr int64_t kHeadElems = int64_t{kPage} * kDim;   // one head's K (or V) of one page
constexpr int64_t kPageElems = 2LL * kKv * kHeadElems;  // packed page: K of all heads, then V
constexpr int64_t kPageBytes = kPageElems * 2;          // 64 KiB
constexpr int64_t kHeadPageBytes = 2 * kHeadElems * 2;  // direct-pool slot: K then V, 8 KiB
constexpr int kChunkVecs = static_cast<int>(kHeadElems * 2 / 16);  // 16-byte words per K (or V)

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

// One block per job (page, kv head, slot): copies that head's K and V of a packed page in pinned
// host memory (read over PCIe through unified addressing) into a direct-pool slot.
__global__ void GatherHeadPages(const uint4* __restrict__ host, const int32_t* __restrict__ jobs,
                                uint4* __restrict__ pool, int64_t slots_per_head) {
  const int32_t page = jobs[3 * blockIdx.x], head = jobs[3 * blockIdx.x + 1],
                slot = jobs[3 * blockIdx.x + 2];
  const uint4* src = host + page * (kPageBytes / 16);
  uint4* dst = pool + (head * slots_per_head + slot) * (kHeadPageBytes / 16);
  for (int i = threadIdx.x; i < kChunkVecs; i += blockDim.x) {
    const uint4 k = src[head * kChunkVecs + i];
    const uint4 v = src[(kKv + head) * kChunkVecs + i];
    dst[i] = k;
    dst[kChunkVecs + i] = v;
  }
}

struct Result {
  double select = 0, transfer = 0, host = 0, attn = 0, fetched = 0, bytes = 0;
};

void PrintRow(int64_t ctx, int reuse, const char* path, const Result& r, int steps, double dense_us,
              double offload_us) {
  const double n = steps;
  const double total = (r.select + r.transfer + r.attn) / n;
  std::printf(
      "| %ldK | %s | %s | %.1f | %.1f (host %.1f) | %.1f | %.1f | %.1f | %.0f | %.1f | %.3f | "
      "%.0f | %.4f |\n",
      static_cast<long>(ctx / 1024), reuse == 1 ? "every step" : "1 in 5", path, r.select / n,
      r.transfer / n, r.host / n, r.attn / n, total, r.fetched / n, r.bytes / n / 1024, dense_us,
      total / dense_us, offload_us, total / offload_us);
  std::fflush(stdout);
}

// Times `reps` synchronous dense decodes over `kv` (after a warm-up).
double TimeDense(const pk::DecodeParams& dp, const gpu::DecodePlan& plan, void* ws, int reps,
                 cudaStream_t st) {
  for (int i = 0; i < 2; ++i) OK(gpu::SparseDecode(plan, dp, ws, st));
  CK(cudaStreamSynchronize(st));
  auto d0 = Clock::now();
  for (int i = 0; i < reps; ++i) {
    OK(gpu::SparseDecode(plan, dp, ws, st));
    CK(cudaStreamSynchronize(st));
  }
  return Us(d0, Clock::now()) / reps;
}

void Run(int64_t ctx, cudaStream_t st) {
  const int32_t pages = static_cast<int32_t>(ctx / kPage);  // full pages; the last is "open"
  std::mt19937 rng(11);
  // Host tier: every page, pinned (device-readable through unified addressing).
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
  const int32_t per_head = std::min(top_k, pages - 2) + 2;  // selected + kept, every row
  const int64_t n_out = int64_t{kKv} * per_head;
  qp.out_indices = Dev<int32_t>(n_out);
  qp.out_last_page_len = Dev<int32_t>(kKv);
  auto qplan = gpu::PlanQuest(qp, pages - 2);
  OK(qplan.status());
  void* qws = Dev<uint8_t>(qplan->workspace_bytes);

  // Staged path: a pool of whole packed pages, 2 x one step's pages.
  const int32_t slots = 2 * static_cast<int32_t>(n_out);
  uint16_t* pool = Dev<uint16_t>(size_t(slots) * kPageElems);
  uint8_t* staging = nullptr;
  CK(cudaMallocHost(&staging, size_t(slots) * kPageBytes));
  uint8_t* d_staging = Dev<uint8_t>(size_t(slots) * kPageBytes);
  int32_t* d_slots = Dev<int32_t>(slots);
  int32_t* d_table = Dev<int32_t>(n_out);
  int32_t* d_indptr = qp.out_indptr;  // rows keep the selector's CSR, ids remapped to slots
  int32_t* d_last = qp.out_last_page_len;
  pk::DecodeParams sp;
  sp.kv = pk::PackedPagedKV(pk::DType::kBFloat16, slots, kPage, kKv, kDim, pool);
  sp.table = {kKv, d_indptr, d_table, d_last};
  sp.batch = 1;
  sp.num_qo_heads = kQo;
  sp.q = d_q;
  sp.o = d_o;
  auto splan = gpu::PlanDecode(sp, false, kBudget);
  OK(splan.status());
  void* sws = Dev<uint8_t>(splan->workspace_bytes);

  // Direct path: per KV head a region of one head's K and V per slot; the same HBM bytes as the
  // staged pool (slots x 64 KiB = kKv x head_slots x 8 KiB).
  const int32_t head_slots = slots;
  uint16_t* hpool = Dev<uint16_t>(size_t(kKv) * head_slots * (kHeadPageBytes / 2));
  pk::PagedKV hkv;
  hkv.dtype = pk::DType::kBFloat16;
  hkv.num_pages = head_slots;
  hkv.page_size = kPage;
  hkv.num_kv_heads = kKv;
  hkv.head_dim = kDim;
  hkv.stride_token = kDim;
  hkv.stride_page = kHeadPageBytes / 2;
  hkv.stride_head = int64_t{head_slots} * (kHeadPageBytes / 2);
  hkv.k = hpool;
  hkv.v = hpool + kHeadElems;
  // One pinned upload per step: the table (n_out) then the jobs (3 x up to n_out).
  int32_t* h_upload = nullptr;
  CK(cudaMallocHost(&h_upload, size_t(4 * n_out) * 4));
  int32_t* d_upload = Dev<int32_t>(4 * n_out);
  uint16_t* d_o2 = Dev<uint16_t>(kQo * kDim);
  pk::DecodeParams hp = sp;
  hp.kv = hkv;
  hp.table = {kKv, d_indptr, d_upload, d_last};
  hp.o = d_o2;
  auto hplan = gpu::PlanDecode(hp, false, kBudget);
  OK(hplan.status());
  void* hws = Dev<uint8_t>(hplan->workspace_bytes);

  // Baselines: dense over every page resident in HBM, and over the pinned host tier.
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
  const double dense_us = TimeDense(dp, *dplan, dws, 50, st);
  pk::DecodeParams op = dp;
  op.kv = pk::PackedPagedKV(pk::DType::kBFloat16, pages, kPage, kKv, kDim, host);
  const double offload_us = TimeDense(op, *dplan, dws, 5, st);

  std::vector<uint16_t> o1(kQo * kDim), o2(kQo * kDim);
  for (int reuse : {1, 5}) {
    // Staged state.
    std::vector<int32_t> slot_of(pages, -1), page_of(slots, -1);
    std::vector<int64_t> used(slots, -1);
    // Direct state: per head, page -> slot, slot -> page, last use, clock hand.
    std::vector<int32_t> hslot_of(size_t(kKv) * pages, -1), hpage_of(size_t(kKv) * head_slots, -1);
    std::vector<int64_t> hused(size_t(kKv) * head_slots, -1);
    std::vector<int32_t> hand(kKv, 0);
    std::vector<int32_t> sel(n_out), table(n_out);
    std::vector<float> base(kQo * kDim);
    std::vector<uint16_t> q(kQo * kDim);
    Result rs, rd;
    std::mt19937 qrng(101 + reuse);
    std::normal_distribution<float> nd(0.f, 1.f);
    const int steps = 60, warm = 10;
    for (int s = 0; s < steps + warm; ++s) {
      if (s % 5 == 0) {
        for (float& b : base) b = nd(qrng);
      }
      for (int i = 0; i < kQo * kDim; ++i) q[i] = pk::FloatToBf16(base[i] + 0.1f * nd(qrng));
      CK(cudaMemcpyAsync(d_q, q.data(), q.size() * 2, cudaMemcpyHostToDevice, st));
      CK(cudaStreamSynchronize(st));
      auto t0 = Clock::now();
      const bool retrieve = s % reuse == 0;
      if (retrieve) {
        OK(gpu::QuestSelect(*qplan, qp, qws, st));
        CK(cudaMemcpyAsync(sel.data(), qp.out_indices, n_out * 4, cudaMemcpyDeviceToHost, st));
        CK(cudaStreamSynchronize(st));
      }
      const double select_us = Us(t0, Clock::now());

      // --- staged fetch ---
      auto t1 = Clock::now();
      int32_t fetched = 0;
      auto th = t1;  // end of the host part of the transfer (pool lookup + staging copy)
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
        rs.select += select_us;
        rs.transfer += Us(t1, t2);
        rs.host += Us(t1, th);
        rs.attn += Us(t2, t3);
        rs.fetched += fetched;
        rs.bytes += double(fetched) * kPageBytes;
      }

      // --- direct fetch (same selection) ---
      auto u1 = Clock::now();
      int32_t jobs = 0;
      auto uh = u1;
      if (retrieve) {
        int32_t* jtab = h_upload;         // [n_out] slot per selected entry
        int32_t* job = h_upload + n_out;  // [jobs][3] page, head, slot
        for (int h = 0; h < kKv; ++h) {
          int32_t* so = &hslot_of[size_t(h) * pages];
          int32_t* po = &hpage_of[size_t(h) * head_slots];
          int64_t* uu = &hused[size_t(h) * head_slots];
          const int32_t* row = &sel[size_t(h) * per_head];
          for (int i = 0; i < per_head; ++i) {
            if (so[row[i]] >= 0) uu[so[row[i]]] = s;
          }
          for (int i = 0; i < per_head; ++i) {
            const int32_t p = row[i];
            if (so[p] < 0) {
              // Clock victim: the next slot this step does not use (more slots than a row: found).
              int32_t v = hand[h];
              while (uu[v] == s) v = (v + 1) % head_slots;
              hand[h] = (v + 1) % head_slots;
              if (po[v] >= 0) so[po[v]] = -1;
              so[p] = v;
              po[v] = p;
              uu[v] = s;
              job[3 * jobs] = p;
              job[3 * jobs + 1] = h;
              job[3 * jobs + 2] = v;
              ++jobs;
            }
            jtab[size_t(h) * per_head + i] = so[p];
          }
        }
        uh = Clock::now();
        CK(cudaMemcpyAsync(d_upload, h_upload, size_t(n_out + 3 * jobs) * 4, cudaMemcpyHostToDevice,
                           st));
        if (jobs > 0) {
          GatherHeadPages<<<jobs, 128, 0, st>>>(reinterpret_cast<const uint4*>(host),
                                                d_upload + n_out, reinterpret_cast<uint4*>(hpool),
                                                head_slots);
          CK(cudaGetLastError());
        }
        CK(cudaStreamSynchronize(st));
      }
      auto u2 = Clock::now();
      if (!retrieve) uh = u2;
      OK(gpu::SparseDecode(*hplan, hp, hws, st));
      CK(cudaStreamSynchronize(st));
      auto u3 = Clock::now();
      if (s >= warm) {
        rd.select += select_us;
        rd.transfer += Us(u1, u2);
        rd.host += Us(u1, uh);
        rd.attn += Us(u2, u3);
        rd.fetched += jobs;
        rd.bytes += double(jobs) * kHeadPageBytes;
      }
      {  // both paths attended the same tokens: the outputs must be identical (untimed)
        CK(cudaMemcpy(o1.data(), d_o, o1.size() * 2, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(o2.data(), d_o2, o2.size() * 2, cudaMemcpyDeviceToHost));
        if (o1 != o2) {
          std::fprintf(stderr, "staged and direct outputs differ (ctx %ld)\n",
                       static_cast<long>(ctx));
          std::exit(1);
        }
      }
    }
    PrintRow(ctx, reuse, "staged", rs, steps, dense_us, offload_us);
    PrintRow(ctx, reuse, "direct", rd, steps, dense_us, offload_us);
  }
  CK(cudaFreeHost(host));
  CK(cudaFreeHost(staging));
  CK(cudaFreeHost(h_upload));
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
      "| ctx | retrieval | fetch | select us | transfer us | attention us | step us | "
      "units fetched | KiB fetched | dense HBM us | step/dense | dense host us | "
      "step/dense-host |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (int64_t ctx : {32768LL, 131072LL}) Run(ctx, st);
  return 0;
}
