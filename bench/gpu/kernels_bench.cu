// Benchmarks of Pagoda's attention-side CUDA kernels on one GPU (issue 4). Every time is the
// median of event-timed CUDA-graph replays (each graph holds several launches over rotating
// inputs, so repeated runs do not just re-read L2); every number is printed beside a baseline
// measured in this same run. Usage: kernels_bench [sdpa_results.txt] (lines "sdpa B CTX MS" from
// sdpa_baseline.py, optional).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "pagoda/kernels/cuda.h"

namespace pk = pagoda::kernels;
namespace gpu = pagoda::kernels::gpu;

#define CK(x)                                                                                 \
  do {                                                                                        \
    cudaError_t e_ = (x);                                                                     \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                           \
    }                                                                                         \
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

constexpr int kHeads = 8, kQoHeads = 32, kDim = 128;

__global__ void FillRandom(uint16_t* p, size_t n, uint32_t seed, float scale) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    uint32_t x = static_cast<uint32_t>(i) * 0x9E3779B1u ^ seed ^ static_cast<uint32_t>(i >> 32);
    x ^= x >> 15;
    x *= 0x2c1b3c6du;
    x ^= x >> 12;
    x *= 0x297a2d39u;
    x ^= x >> 15;
    const float u = (static_cast<float>(x >> 8) * (1.f / 16777216.f) * 2.f - 1.f) * scale;
    p[i] = pk::FloatToBf16(u);
  }
}

// SM-driven copy (what torch's copy_ does): grid-stride 16-byte loads and stores.
__global__ void CopyKernel(const uint4* __restrict__ src, uint4* __restrict__ dst, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    dst[i] = src[i];
  }
}

template <typename T>
T* DevAlloc(size_t n) {
  T* p = nullptr;
  CK(cudaMalloc(reinterpret_cast<void**>(&p), std::max<size_t>(n, 1) * sizeof(T)));
  return p;
}

template <typename T>
T* DevCopy(const std::vector<T>& h) {
  T* p = DevAlloc<T>(h.size());
  CK(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return p;
}

uint16_t* RandomBf16(size_t n, uint32_t seed, float scale = 1.f) {
  uint16_t* p = DevAlloc<uint16_t>(n);
  FillRandom<<<1024, 256>>>(p, n, seed, scale);
  CK(cudaGetLastError());
  return p;
}

cudaStream_t g_stream;

// Median milliseconds per launch of `enqueue` (which enqueues `per_graph` launches).
double MedianMs(const std::function<void()>& enqueue, int per_graph, int reps = 15) {
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CK(cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeThreadLocal));
  enqueue();
  CK(cudaStreamEndCapture(g_stream, &graph));
  CK(cudaGraphInstantiate(&exec, graph, 0));
  for (int i = 0; i < 3; ++i) CK(cudaGraphLaunch(exec, g_stream));
  CK(cudaStreamSynchronize(g_stream));
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    CK(cudaEventRecord(a, g_stream));
    CK(cudaGraphLaunch(exec, g_stream));
    CK(cudaEventRecord(b, g_stream));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  CK(cudaGraphExecDestroy(exec));
  CK(cudaGraphDestroy(graph));
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  return t[t.size() / 2] / per_graph;
}

struct Row {
  std::string what;
  double value;
  std::string unit;
  std::string vs;
  double ratio;
  std::string goal;
};
std::vector<Row> g_rows;

void Report(const std::string& what, double value, const std::string& unit, const std::string& vs,
            double ratio, const std::string& goal) {
  g_rows.push_back({what, value, unit, vs, ratio, goal});
  std::printf("%-46s %10.3f %-6s | %-34s %8.3f | %s\n", what.c_str(), value, unit.c_str(),
              vs.c_str(), ratio, goal.c_str());
  std::fflush(stdout);
}

struct Table {
  int32_t rows = 0;
  int32_t* indptr = nullptr;
  int32_t* indices = nullptr;
  int32_t* last = nullptr;
  int64_t max_tokens = 0;
};

Table Upload(const std::vector<int32_t>& indptr, const std::vector<int32_t>& indices,
             const std::vector<int32_t>& last, int page_size) {
  Table t;
  t.rows = static_cast<int32_t>(last.size());
  t.indptr = DevCopy(indptr);
  t.indices = DevCopy(indices);
  t.last = DevCopy(last);
  for (int32_t r = 0; r < t.rows; ++r) {
    const int64_t n = indptr[r + 1] - indptr[r];
    t.max_tokens = std::max<int64_t>(t.max_tokens, n == 0 ? 0 : (n - 1) * page_size + last[r]);
  }
  return t;
}

// Per (sequence, KV head): `budget` pages = selected random pages of the sequence's first
// `ctx_pages` + sink page 0 + the last `window` pages (full pages), in the order a Quest selection
// lists them (selected by position, then kept).
Table SparseTable(std::mt19937& rng, int batch, int seq_pages, int ctx_pages, int budget,
                  int window, int page_size) {
  std::vector<int32_t> indptr = {0}, indices, last;
  std::vector<int32_t> middle(ctx_pages - 1 - window);
  for (int b = 0; b < batch; ++b) {
    for (int h = 0; h < kHeads; ++h) {
      std::iota(middle.begin(), middle.end(), 1);
      std::shuffle(middle.begin(), middle.end(), rng);
      std::vector<int32_t> sel(middle.begin(), middle.begin() + (budget - 1 - window));
      std::sort(sel.begin(), sel.end());
      sel.push_back(0);
      for (int w = ctx_pages - window; w < ctx_pages; ++w) sel.push_back(w);
      for (int32_t p : sel) indices.push_back(b * seq_pages + p);
      indptr.push_back(static_cast<int32_t>(indices.size()));
      last.push_back(page_size);
    }
  }
  return Upload(indptr, indices, last, page_size);
}

// Dense: one row per sequence, its first ctx_pages pages.
Table DenseTable(int batch, int seq_pages, int ctx_pages, int page_size) {
  std::vector<int32_t> indptr = {0}, indices, last;
  for (int b = 0; b < batch; ++b) {
    for (int p = 0; p < ctx_pages; ++p) indices.push_back(b * seq_pages + p);
    indptr.push_back(static_cast<int32_t>(indices.size()));
    last.push_back(page_size);
  }
  return Upload(indptr, indices, last, page_size);
}

struct Decoder {
  pk::DecodeParams p;
  gpu::DecodePlan plan;
  void* ws = nullptr;
};

// The plan options every headline number uses: the fused merge, over a workspace zeroed once.
gpu::DecodePlanOptions HeadlineOptions() {
  gpu::DecodePlanOptions opt;
  opt.zeroed_workspace = true;
  return opt;
}

// Options that force `chunks` KV chunks per row (for the split sweep).
gpu::DecodePlanOptions ForcedChunks(int chunks, bool fused, int stages) {
  gpu::DecodePlanOptions opt = HeadlineOptions();
  opt.fused_merge = fused;
  opt.pipeline_stages = stages;
  opt.max_chunks = chunks;
  opt.min_chunk_tokens = 1;
  opt.chunk_overhead_tokens = 0;
  opt.blocks_per_sm = 1 << 20;  // one wave whatever c: the cost is tokens / c, least at c
  return opt;
}

Decoder MakeDecoder(const pk::PagedKV& kv, const Table& t, int batch, bool per_head, uint16_t* q,
                    uint16_t* o, float* lse, const gpu::DecodePlanOptions& opt = HeadlineOptions(),
                    bool quiet = false) {
  Decoder d;
  d.p.kv = kv;
  d.p.table = {t.rows, t.indptr, t.indices, t.last};
  d.p.batch = batch;
  d.p.num_qo_heads = kQoHeads;
  d.p.per_kv_head = per_head;
  d.p.q = q;
  d.p.o = o;
  d.p.lse = lse;
  auto plan = gpu::PlanDecode(d.p, false, t.max_tokens, opt);
  OK(plan.status());
  d.plan = *plan;
  if (!quiet) {
    std::printf("  plan: batch %d, max %lld tokens/row -> %d chunks of %d tokens\n", batch,
                static_cast<long long>(t.max_tokens), d.plan.num_chunks, d.plan.chunk_tokens);
  }
  d.ws = DevAlloc<uint8_t>(d.plan.workspace_bytes);
  CK(cudaMemset(d.ws, 0, std::max<size_t>(d.plan.workspace_bytes, 1)));
  return d;
}

double TimeDecoders(std::vector<Decoder>& ds) {
  return MedianMs(
      [&] {
        for (auto& d : ds) OK(gpu::SparseDecode(d.plan, d.p, d.ws, g_stream));
      },
      static_cast<int>(ds.size()));
}

std::map<std::pair<int, int>, double> LoadSdpa(const char* path) {
  std::map<std::pair<int, int>, double> m;
  if (path == nullptr) return m;
  std::ifstream in(path);
  std::string tag;
  int b, ctx;
  double ms;
  while (in >> tag >> b >> ctx >> ms) {
    if (tag == "sdpa") m[{b, ctx}] = ms;
  }
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  CK(cudaStreamCreate(&g_stream));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount,
              prop.l2CacheSize >> 20);
  const auto sdpa = LoadSdpa(argc > 1 ? argv[1] : nullptr);
  std::mt19937 rng(2026);

  // Baseline: device-to-device copy of 1 GiB (bytes read + written).
  const size_t copy_bytes = size_t{1} << 30;
  uint8_t* src = DevAlloc<uint8_t>(copy_bytes);
  uint8_t* dst = DevAlloc<uint8_t>(copy_bytes);
  CK(cudaMemset(src, 1, copy_bytes));
  const double memcpy_ms = MedianMs(
      [&] { CK(cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice, g_stream)); }, 1);
  const double kernel_ms = MedianMs(
      [&] {
        CopyKernel<<<prop.multiProcessorCount * 8, 512, 0, g_stream>>>(
            reinterpret_cast<const uint4*>(src), reinterpret_cast<uint4*>(dst), copy_bytes / 16);
        CK(cudaGetLastError());
      },
      1);
  const double memcpy_tbps = 2.0 * copy_bytes / (memcpy_ms * 1e-3) / 1e12;
  const double kernel_tbps = 2.0 * copy_bytes / (kernel_ms * 1e-3) / 1e12;
  const double copy_tbps = std::max(memcpy_tbps, kernel_tbps);  // the faster one is the bar
  Report("d2d cudaMemcpy 1 GiB (read+write)", memcpy_tbps, "TB/s", "-", 1.0, "info");
  Report("d2d copy kernel 1 GiB (read+write)", kernel_tbps, "TB/s", "-", 1.0, "baseline");
  CK(cudaFree(src));
  CK(cudaFree(dst));

  // Llama-3-8B-like layer: 32 query heads, 8 KV heads, head_dim 128, bf16, 16-token pages.
  const int page = 16;
  const size_t page_elems = size_t{2} * kHeads * page * kDim;
  const int seq_pages = 131072 / page;  // each sequence owns a 128K-token context
  const int budget = 4096 / page, window = 15;
  for (int batch : {16, 1}) {
    const size_t pool_pages = static_cast<size_t>(batch) * seq_pages;
    uint16_t* pool = RandomBf16(pool_pages * page_elems, 11 + batch);
    const pk::PagedKV kv = pk::PackedPagedKV(pk::DType::kBFloat16, static_cast<int32_t>(pool_pages),
                                             page, kHeads, kDim, pool);
    uint16_t* q = RandomBf16(static_cast<size_t>(batch) * kQoHeads * kDim, 5, 2.f);
    uint16_t* o = DevAlloc<uint16_t>(static_cast<size_t>(batch) * kQoHeads * kDim);
    float* lse = DevAlloc<float>(static_cast<size_t>(batch) * kQoHeads);
    // Sparse: rotate over several selections so batch 1 does not run from L2.
    const int rot = batch == 1 ? 8 : 4;
    std::vector<Decoder> sparse;
    for (int r = 0; r < rot; ++r) {
      sparse.push_back(
          MakeDecoder(kv, SparseTable(rng, batch, seq_pages, seq_pages, budget, window, page),
                      batch, true, q, o, lse));
    }
    const double ms = TimeDecoders(sparse);
    const double bytes = static_cast<double>(batch) * kHeads * budget * page * kDim * 2 * 2;
    const double tbps = bytes / (ms * 1e-3) / 1e12;
    const std::string b = "B=" + std::to_string(batch);
    Report("sparse 4K-budget decode time, " + b, ms * 1e3, "us", "-", 0,
           batch == 1 ? "<= 15 us" : "-");
    // The same selections with the other merge paths (same split), then a sweep of the split:
    // each row against the headline above.
    {
      std::vector<Table> tables;
      for (const Decoder& d : sparse) {
        tables.push_back({d.p.table.num_rows, const_cast<int32_t*>(d.p.table.indptr),
                          const_cast<int32_t*>(d.p.table.indices),
                          const_cast<int32_t*>(d.p.table.last_page_len), 4096});
      }
      struct Timed {
        double first;  // ms per step
        int second;    // chunks a row
      };
      auto time_with = [&](const gpu::DecodePlanOptions& opt) {
        std::vector<Decoder> ds;
        for (const Table& t : tables) {
          ds.push_back(MakeDecoder(kv, t, batch, true, q, o, lse, opt, true));
        }
        const double t = TimeDecoders(ds);
        const Timed r{t, ds[0].plan.num_chunks};
        for (auto& d : ds) CK(cudaFree(d.ws));
        return r;
      };
      gpu::DecodePlanOptions memset_opt;  // the defaults: fused merge, counters cleared per run
      const auto with_memset = time_with(memset_opt);
      Report("  fused merge + counter memset per run, " + b, with_memset.first * 1e3, "us",
             "/ headline", with_memset.first / ms, "-");
      gpu::DecodePlanOptions two = HeadlineOptions();  // the kernel before 2026-11-29
      two.fused_merge = false;
      two.pipeline_stages = 4;
      two.min_chunk_tokens = 128;
      const auto two_kernels = time_with(two);
      Report(
          "  before: 2 kernels, 4 stages, split " + std::to_string(two_kernels.second) + ", " + b,
          two_kernels.first * 1e3, "us", "/ headline", two_kernels.first / ms, "-");
      gpu::DecodePlanOptions four = HeadlineOptions();
      four.pipeline_stages = 4;
      const auto staged4 = time_with(four);
      Report("  4-stage pipeline, planned split " + std::to_string(staged4.second) + ", " + b,
             staged4.first * 1e3, "us", "/ headline", staged4.first / ms, "-");
      {  // the fixed cost: the same plan over empty rows (no KV read; partials, merge, launch)
        const int32_t rows = batch * kHeads;
        Table empty =
            Upload(std::vector<int32_t>(rows + 1, 0), {0}, std::vector<int32_t>(rows, page), page);
        empty.max_tokens = 4096;  // plan as for the 4K budget
        std::vector<Decoder> ds;
        for (int r = 0; r < rot; ++r)
          ds.push_back(MakeDecoder(kv, empty, batch, true, q, o, lse, HeadlineOptions(), true));
        const double t = TimeDecoders(ds);
        Report("  same plan over empty rows (fixed cost), " + b, t * 1e3, "us", "/ headline",
               t / ms, "-");
        for (auto& d : ds) CK(cudaFree(d.ws));
      }
      if (batch == 16) {  // twice the rows in one launch (64K-token contexts in the same pool):
        // a fixed per-launch cost shows as a higher rate here, a per-byte one does not
        uint16_t* q32 = RandomBf16(size_t{32} * kQoHeads * kDim, 7, 2.f);
        uint16_t* o32 = DevAlloc<uint16_t>(size_t{32} * kQoHeads * kDim);
        std::vector<Decoder> ds;
        for (int r = 0; r < rot; ++r) {
          ds.push_back(MakeDecoder(
              kv, SparseTable(rng, 32, seq_pages / 2, seq_pages / 2, budget, window, page), 32,
              true, q32, o32, nullptr));
        }
        const double t = TimeDecoders(ds);
        const double tb = 2 * bytes / (t * 1e-3) / 1e12;
        Report("  B=32 in one launch: KV bandwidth", tb, "TB/s", "d2d copy", tb / copy_tbps, "-");
        for (auto& d : ds) CK(cudaFree(d.ws));
        CK(cudaFree(q32));
        CK(cudaFree(o32));
      }
      const std::vector<int> sweep = batch == 1 ? std::vector<int>{8, 12, 16, 24, 32, 48, 64}
                                                : std::vector<int>{1, 2, 3, 4, 6, 8, 12};
      for (int variant = 0; variant < 3; ++variant) {  // fused 4 stages, fused 3, 2-kernel 4
        const bool fused = variant < 2;
        const int stages = variant == 1 ? 3 : 4;
        for (int c : sweep) {
          const auto r = time_with(ForcedChunks(c, fused, stages));
          Report("  split " + std::to_string(r.second) + (fused ? " fused" : " 2-kernel") +
                     " stages " + std::to_string(stages) + ", " + b,
                 r.first * 1e3, "us", "/ headline", r.first / ms, "-");
        }
      }
    }
    Report("sparse decode KV bandwidth, " + b, tbps, "TB/s", "d2d copy", tbps / copy_tbps,
           ">= 0.85");
    // Dense at context = budget (4K), with our kernel, rotating over sequences' pools.
    for (int ctx : {4096, 32768, 131072}) {
      const int ctx_pages = ctx / page;
      std::vector<Decoder> dense;
      dense.push_back(
          MakeDecoder(kv, DenseTable(batch, seq_pages, ctx_pages, page), batch, false, q, o, lse));
      if (ctx == 4096 && batch == 1) {  // 16 MB fits in L2: rotate over other pages
        for (int r = 1; r < 8; ++r) {
          std::vector<int32_t> indptr = {0, ctx_pages}, indices, last = {page};
          for (int p = 0; p < ctx_pages; ++p) indices.push_back(r * ctx_pages + p);
          dense.push_back(
              MakeDecoder(kv, Upload(indptr, indices, last, page), batch, false, q, o, lse));
        }
      }
      const double dms = TimeDecoders(dense);
      const std::string c = std::to_string(ctx / 1024) + "K";
      if (ctx > 4096) {  // the pipeline depth and the kernel before, on the same dense rows
        gpu::DecodePlanOptions before = HeadlineOptions();
        before.fused_merge = false;
        before.pipeline_stages = 4;
        gpu::DecodePlanOptions s3 = HeadlineOptions(), s4 = HeadlineOptions();
        s3.pipeline_stages = 3;
        s4.pipeline_stages = 4;
        const Table dt = DenseTable(batch, seq_pages, ctx_pages, page);
        const std::vector<std::pair<std::string, gpu::DecodePlanOptions>> variants = {
            {"3 stages", s3}, {"4 stages", s4}, {"before (2 kernels, 4 stages)", before}};
        for (const auto& [name, opt] : variants) {
          std::vector<Decoder> one = {MakeDecoder(kv, dt, batch, false, q, o, lse, opt, true)};
          const double t = TimeDecoders(one);
          Report("  dense ctx " + c + " " + name + ", " + b, t * 1e3, "us", "/ planned", t / dms,
                 "-");
          CK(cudaFree(one[0].ws));
        }
      }
      Report("dense decode (ours) ctx " + c + ", " + b, dms * 1e3, "us", "sparse/dense", ms / dms,
             ctx == 4096 ? "<= 1.1" : "-");
      Report("dense-" + c + "/sparse-4K speedup (ours), " + b, dms / ms, "x", "-", 0,
             (ctx == 131072 && batch == 16) ? ">= 20" : "-");
      const auto it = sdpa.find({batch, ctx});
      if (it != sdpa.end()) {
        Report("torch SDPA dense ctx " + c + ", " + b, it->second * 1e3, "us", "sparse/sdpa",
               ms / it->second, ctx == 4096 ? "<= 1.1" : "-");
        Report("sdpa-" + c + "/sparse-4K speedup, " + b, it->second / ms, "x", "-", 0,
               (ctx == 131072 && batch == 16) ? ">= 20" : "-");
      }
    }
    // Scoring + top-k over the 128K context (8192 pages; 16 kept; 240 selected).
    {
      const int cand_n = seq_pages - 1 - window;
      const size_t sum_elems = pool_pages * kHeads * kDim;
      uint16_t* smin = RandomBf16(sum_elems, 21, 1.f);
      uint16_t* smax = RandomBf16(sum_elems, 22, 1.f);
      std::vector<int32_t> count(pool_pages, page), ci = {0}, cand, ki = {0}, keep,
                                                    lastv(batch, page);
      for (int bb = 0; bb < batch; ++bb) {
        for (int p = 1; p < seq_pages - window; ++p) cand.push_back(bb * seq_pages + p);
        ci.push_back(static_cast<int32_t>(cand.size()));
        keep.push_back(bb * seq_pages);
        for (int w = seq_pages - window; w < seq_pages; ++w) keep.push_back(bb * seq_pages + w);
        ki.push_back(static_cast<int32_t>(keep.size()));
      }
      pk::QuestParams qp;
      qp.batch = batch;
      qp.num_qo_heads = kQoHeads;
      qp.q = q;
      qp.summaries = {pk::DType::kBFloat16,
                      static_cast<int32_t>(pool_pages),
                      1,
                      kHeads,
                      kDim,
                      smin,
                      smax,
                      nullptr,
                      DevCopy(count)};
      qp.page_size = page;
      qp.cand_indptr = DevCopy(ci);
      qp.cand_pages = DevCopy(cand);
      qp.keep_indptr = DevCopy(ki);
      qp.keep_pages = DevCopy(keep);
      qp.seq_last_page_len = DevCopy(lastv);
      qp.top_k = budget - 1 - window;
      qp.scores = DevAlloc<float>(size_t{kHeads} * cand.size());
      qp.out_indptr = DevAlloc<int32_t>(static_cast<size_t>(batch) * kHeads + 1);
      qp.out_indices = DevAlloc<int32_t>(static_cast<size_t>(batch) * kHeads * budget);
      qp.out_last_page_len = DevAlloc<int32_t>(static_cast<size_t>(batch) * kHeads);
      auto plan = gpu::PlanQuest(qp, cand_n);
      OK(plan.status());
      const double qms = MedianMs([&] { OK(gpu::QuestSelect(*plan, qp, nullptr, g_stream)); }, 1);
      Report("Quest score+top-k 128K ctx (8176 pages), " + b, qms * 1e3, "us", "/ sparse attn",
             qms / ms, "fraction");
      // Hierarchical: 64-token physical pages scored as 4 sub-pages of 16 (LServe).
      pk::QuestParams hp = qp;
      hp.summaries.num_pages = static_cast<int32_t>(pool_pages / 4);
      hp.summaries.sub_pages = 4;
      hp.page_size = 64;
      std::vector<int32_t> hcount(pool_pages / 4, 64), hci = {0}, hcand, hki = {0}, hkeep;
      for (int bb = 0; bb < batch; ++bb) {
        const int sp = seq_pages / 4;
        for (int p = 1; p < sp - 4; ++p) hcand.push_back(bb * sp + p);
        hci.push_back(static_cast<int32_t>(hcand.size()));
        hkeep.push_back(bb * sp);
        for (int w = sp - 4; w < sp; ++w) hkeep.push_back(bb * sp + w);
        hki.push_back(static_cast<int32_t>(hkeep.size()));
      }
      hp.summaries.count = DevCopy(hcount);
      hp.cand_indptr = DevCopy(hci);
      hp.cand_pages = DevCopy(hcand);
      hp.keep_indptr = DevCopy(hki);
      hp.keep_pages = DevCopy(hkeep);
      hp.top_k = 64 - 5;
      auto hplan = gpu::PlanQuest(hp, seq_pages / 4);
      OK(hplan.status());
      const double hms = MedianMs([&] { OK(gpu::QuestSelect(*hplan, hp, nullptr, g_stream)); }, 1);
      Report("hier. score+top-k 64x4 pages 128K ctx, " + b, hms * 1e3, "us", "/ sparse attn",
             hms / ms, "fraction");
      CK(cudaFree(smin));
      CK(cudaFree(smax));
    }
    if (batch == 16) {  // k-means over a 32K-token prompt, 8 KV heads, 512 clusters
      const int tokens = 32768, clusters = 512, iters = 10;
      std::vector<int32_t> pages(tokens / page);
      std::iota(pages.begin(), pages.end(), 0);
      pk::KMeansParams kp;
      kp.kv = kv;
      kp.pages = DevCopy(pages);
      kp.num_tokens = tokens;
      kp.num_clusters = clusters;
      kp.centroids = DevAlloc<float>(size_t{kHeads} * clusters * kDim);
      std::vector<float> init(size_t{kHeads} * clusters * kDim);
      std::normal_distribution<float> nd(0.f, 0.5f);
      for (auto& x : init) x = nd(rng);
      CK(cudaMemcpy(kp.centroids, init.data(), init.size() * 4, cudaMemcpyHostToDevice));
      kp.assignment = DevAlloc<int32_t>(size_t{kHeads} * tokens);
      kp.cluster_size = DevAlloc<int32_t>(size_t{kHeads} * clusters);
      void* kws = DevAlloc<uint8_t>(gpu::KMeansWorkspaceBytes(kp));
      const double ams = MedianMs([&] { OK(gpu::KMeansAssign(kp, g_stream)); }, 1);
      const double ums = MedianMs([&] { OK(gpu::KMeansUpdate(kp, kws, g_stream)); }, 1);
      const double flops = 3.0 * tokens * clusters * kDim * kHeads;
      Report("k-means assign 32K tok x 512 cl x 8 heads", ams * 1e3, "us", "TFLOP/s (3 flop/elem)",
             flops / (ams * 1e-3) / 1e12, "-");
      Report("k-means update 32K tok x 8 heads", ums * 1e3, "us", "-", 0, "-");
      Report("k-means 10 iterations, 32K prompt", (ams + ums) * iters, "ms", "-", 0, "-");
    }
    for (auto& d : sparse) CK(cudaFree(d.ws));
    CK(cudaFree(pool));
  }

  // Bandwidth at other page sizes: batch 16, 4K budget out of 32K contexts.
  for (int ps : {32, 64}) {
    const int sp = 32768 / ps;
    const size_t pes = size_t{2} * kHeads * ps * kDim;
    const size_t pool_pages = size_t{16} * sp;
    uint16_t* pool = RandomBf16(pool_pages * pes, 99 + ps);
    const pk::PagedKV kv = pk::PackedPagedKV(pk::DType::kBFloat16, static_cast<int32_t>(pool_pages),
                                             ps, kHeads, kDim, pool);
    uint16_t* q = RandomBf16(size_t{16} * kQoHeads * kDim, 6, 2.f);
    uint16_t* o = DevAlloc<uint16_t>(size_t{16} * kQoHeads * kDim);
    std::vector<Decoder> ds;
    for (int r = 0; r < 4; ++r) {
      ds.push_back(
          MakeDecoder(kv, SparseTable(rng, 16, sp, sp, 4096 / ps, 2, ps), 16, true, q, o, nullptr));
    }
    const double ms = TimeDecoders(ds);
    const double tbps = 16.0 * kHeads * 4096 * kDim * 4 / (ms * 1e-3) / 1e12;
    Report("sparse decode KV bandwidth, page " + std::to_string(ps) + ", B=16", tbps, "TB/s",
           "d2d copy", tbps / copy_tbps, ">= 0.85");
    CK(cudaFree(pool));
  }

  std::printf(
      "\n| measurement | value | unit | baseline | ratio | goal |\n|---|---|---|---|---|---|\n");
  for (const Row& r : g_rows) {
    std::printf("| %s | %.3f | %s | %s | %.3f | %s |\n", r.what.c_str(), r.value, r.unit.c_str(),
                r.vs.c_str(), r.ratio, r.goal.c_str());
  }
  return 0;
}
