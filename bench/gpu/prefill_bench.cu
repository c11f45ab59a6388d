// Block-sparse prefill (issue 12) against torch SDPA causal attention on one GPU: whole-prompt
// causal prefill of a 32K and a 128K prompt at Llama-3-8B layer shapes (32 query heads, 8 KV
// heads, head_dim 128, bf16, batch 1), with 0% or 50% streaming heads (sink 64 + window 1024
// tokens) and with or without page selection (a 4096-token context budget per dense KV head).
//
// Prefill is run two ways: the prompt as ONE chunk (one launch), and as chunks of 8192 queries
// each attending the cached context before it (chunked prefill, one launch per chunk, what
// engines do). Page selection needs a context, so its rows are chunked only. K/V sit in a paged
// pool in a random page order (the table gathers them). Every time is the median of
// CUDA-event-timed runs after warm-up; each row's ratio is SDPA's time (same prompt, whole-prompt
// causal, from sdpa_prefill.py) over ours.
//
// Before any timing the kernel's output is checked against the CPU reference
// (BlockSparsePrefillReference) at T = 2048 for every mode, one chunk and chunks of 512; every
// timed output is checked finite and written (outputs are poisoned with NaN first). Any failure
// exits non-zero before a speed is printed.
//
// Usage: prefill_bench [sdpa_prefill.txt] (lines "sdpa_causal T MS", optional).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "pagoda/kernels/cuda.h"
#include "pagoda/kernels/reference.h"

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

constexpr int kKvHeads = 8, kQoHeads = 32, kGroup = kQoHeads / kKvHeads, kDim = 128;
constexpr int kSink = 64, kWindow = 1024;  // streaming heads' Lambda mask
constexpr int kBudgetTokens = 4096;        // selected context per dense KV head
constexpr int kChunk = 8192;               // chunked prefill: queries per chunk

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

// Counts bf16 values that are not finite (NaN: the poison of unwritten outputs, or inf).
__global__ void CountNonFinite(const uint16_t* p, size_t n, unsigned long long* bad) {
  unsigned long long c = 0;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    c += (p[i] & 0x7f80u) == 0x7f80u ? 1 : 0;
  }
  if (c != 0) atomicAdd(bad, c);
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
  if (!h.empty()) CK(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return p;
}

template <typename T>
std::vector<T> HostCopy(const T* d, size_t n) {
  std::vector<T> h(n);
  CK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

cudaStream_t g_stream;

enum class Mode { kDense, kSelect, kStreaming, kStreamingSelect };

const char* ModeName(Mode m) {
  switch (m) {
    case Mode::kDense:
      return "dense (0% streaming)";
    case Mode::kSelect:
      return "0% streaming + selection";
    case Mode::kStreaming:
      return "50% streaming";
    case Mode::kStreamingSelect:
      return "50% streaming + selection";
  }
  return "?";
}
bool Streams(Mode m) { return m == Mode::kStreaming || m == Mode::kStreamingSelect; }
bool Selects(Mode m) { return m == Mode::kSelect || m == Mode::kStreamingSelect; }

// Streaming KV heads for the 50% modes: every other head (0, 2, 4, 6).
std::vector<uint8_t> StreamingHeads(Mode m) {
  std::vector<uint8_t> h(kKvHeads, 0);
  if (Streams(m)) {
    for (int i = 0; i < kKvHeads; i += 2) h[i] = 1;
  }
  return h;
}

// One prompt of T tokens in a paged pool: logical page k of the sequence is physical page
// phys[k] (a random permutation), K/V random in [-1, 1], queries in [-2, 2].
struct Prompt {
  int T = 0, page = 0;
  std::vector<int32_t> phys;
  uint16_t* pool = nullptr;
  uint16_t* q = nullptr;
  uint16_t* o = nullptr;
  float* lse = nullptr;  // only for the checked prompts
  int32_t* indices = nullptr;
  uint8_t* heads_half = nullptr;
  pk::PagedKV kv;

  size_t q_elems() const { return size_t{1} * T * kQoHeads * kDim; }
  size_t pool_elems() const { return size_t{2} * kKvHeads * T * kDim; }
  void PoisonO() const { CK(cudaMemsetAsync(o, 0xff, q_elems() * 2, g_stream)); }  // bf16 NaN
};

Prompt MakePrompt(int T, int page, std::mt19937& rng, bool with_lse) {
  Prompt p;
  p.T = T;
  p.page = page;
  const int pages = T / page;
  p.phys.resize(pages);
  std::iota(p.phys.begin(), p.phys.end(), 0);
  std::shuffle(p.phys.begin(), p.phys.end(), rng);
  p.pool = DevAlloc<uint16_t>(p.pool_elems());
  p.q = DevAlloc<uint16_t>(p.q_elems());
  p.o = DevAlloc<uint16_t>(p.q_elems());
  if (with_lse) p.lse = DevAlloc<float>(size_t{1} * T * kQoHeads);
  FillRandom<<<1024, 256, 0, g_stream>>>(p.pool, p.pool_elems(), rng(), 1.f);
  FillRandom<<<1024, 256, 0, g_stream>>>(p.q, p.q_elems(), rng(), 2.f);
  CK(cudaGetLastError());
  p.indices = DevCopy(p.phys);
  p.heads_half = DevCopy(StreamingHeads(Mode::kStreaming));
  p.kv = pk::PackedPagedKV(pk::DType::kBFloat16, pages, page, kKvHeads, kDim, p.pool);
  CK(cudaStreamSynchronize(g_stream));
  return p;
}

void FreePrompt(Prompt& p) {
  for (void* x : {static_cast<void*>(p.pool), static_cast<void*>(p.q), static_cast<void*>(p.o),
                  static_cast<void*>(p.lse), static_cast<void*>(p.indices),
                  static_cast<void*>(p.heads_half)}) {
    CK(cudaFree(x));
  }
  p = Prompt{};
}

// A dense head's selection of context pages for a chunk: the first page (sinks), the last
// window / page pages before the chunk (local, at most half the budget), the rest drawn at random
// (what a Quest top-k picks is data-dependent; its cost here is the same), strictly increasing. All
// context pages when they fit the budget.
std::vector<int32_t> SelectPages(std::mt19937& rng, int ctx_pages, int budget_pages,
                                 int local_pages) {
  std::vector<int32_t> sel;
  if (ctx_pages <= budget_pages) {
    sel.resize(ctx_pages);
    std::iota(sel.begin(), sel.end(), 0);
    return sel;
  }
  local_pages = std::min(local_pages, budget_pages / 2);  // at least half drawn at random
  std::vector<int32_t> middle(ctx_pages - local_pages - 1);
  std::iota(middle.begin(), middle.end(), 1);
  std::shuffle(middle.begin(), middle.end(), rng);
  sel.assign(middle.begin(), middle.begin() + (budget_pages - 1 - local_pages));
  sel.push_back(0);
  for (int k = ctx_pages - local_pages; k < ctx_pages; ++k) sel.push_back(k);
  std::sort(sel.begin(), sel.end());
  return sel;
}

// One launch: queries [start, start + n) of the prompt, against its first start + n tokens.
struct Chunk {
  int start = 0, n = 0;
  std::vector<int32_t> indptr, last, q_indptr, sel_indptr, sel_pages;  // host mirrors
  std::vector<void*> dev;                                              // to free
  pk::PrefillParams p;
  gpu::PrefillPlan plan;
};

struct Run {
  Mode mode = Mode::kDense;
  int chunk = 0;
  std::vector<Chunk> chunks;
  void* ws = nullptr;
};

template <typename T>
T* Track(Chunk& c, const std::vector<T>& h) {
  T* d = DevCopy(h);
  c.dev.push_back(d);
  return d;
}

// The chunks of a prefill of T tokens (host side): chunk c holds queries [start, start + n) and
// attends the first start + n tokens; with selection, the dense KV heads' context pages.
std::vector<Chunk> PlanChunks(int T, int page, Mode mode, int chunk, int budget_tokens,
                              std::mt19937& rng) {
  std::vector<Chunk> chunks;
  const std::vector<uint8_t> heads = StreamingHeads(mode);
  for (int start = 0; start < T; start += chunk) {
    Chunk c;
    c.start = start;
    c.n = std::min(chunk, T - start);
    const int len = start + c.n;
    const int pages = (len + page - 1) / page;
    c.indptr = {0, pages};
    c.last = {len - (pages - 1) * page};
    c.q_indptr = {0, c.n};
    if (Selects(mode)) {
      c.sel_indptr = {0};
      for (int h = 0; h < kKvHeads; ++h) {
        if (!heads[h]) {
          const auto sel = SelectPages(rng, start / page, budget_tokens / page, kWindow / page);
          c.sel_pages.insert(c.sel_pages.end(), sel.begin(), sel.end());
        }
        c.sel_indptr.push_back(static_cast<int32_t>(c.sel_pages.size()));
      }
    }
    chunks.push_back(std::move(c));
  }
  return chunks;
}

Run MakeRun(const Prompt& pr, Mode mode, int chunk, int tile_q, int budget_tokens,
            std::mt19937& rng) {
  Run run;
  run.mode = mode;
  run.chunk = chunk;
  run.chunks = PlanChunks(pr.T, pr.page, mode, chunk, budget_tokens, rng);
  size_t ws = 0;
  for (Chunk& c : run.chunks) {
    const size_t start = c.start;
    c.p.kv = pr.kv;
    c.p.table = {1, Track(c, c.indptr), pr.indices, Track(c, c.last)};
    c.p.batch = 1;
    c.p.num_qo_heads = kQoHeads;
    c.p.q_indptr = Track(c, c.q_indptr);
    c.p.q = pr.q + start * kQoHeads * kDim;
    c.p.o = pr.o + start * kQoHeads * kDim;
    c.p.lse = pr.lse == nullptr ? nullptr : pr.lse + start * kQoHeads;
    if (Streams(mode)) {
      c.p.is_streaming = pr.heads_half;
      c.p.sink_tokens = kSink;
      c.p.window_tokens = kWindow;
    }
    if (Selects(mode)) {
      c.p.select_indptr = Track(c, c.sel_indptr);
      c.p.select_pages = Track(c, c.sel_pages);
    }
    gpu::PrefillPlanOptions opt;
    opt.tile_q = tile_q;
    auto plan = gpu::PlanPrefill(c.p, c.n, opt);
    OK(plan.status());
    c.plan = *plan;
    ws = std::max(ws, c.plan.workspace_bytes);
  }
  run.ws = DevAlloc<uint8_t>(ws);
  return run;
}

void FreeRun(Run& run) {
  for (Chunk& c : run.chunks) {
    for (void* d : c.dev) CK(cudaFree(d));
  }
  CK(cudaFree(run.ws));
  run.chunks.clear();
}

void Enqueue(const Run& run) {
  for (const Chunk& c : run.chunks) OK(gpu::BlockSparsePrefill(c.plan, c.p, run.ws, g_stream));
}

// Median milliseconds of one whole prefill (all its chunks), after `warmup` runs.
double MedianMs(const Run& run, int warmup, int reps) {
  for (int i = 0; i < warmup; ++i) Enqueue(run);
  CK(cudaStreamSynchronize(g_stream));
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    CK(cudaEventRecord(a, g_stream));
    Enqueue(run);
    CK(cudaEventRecord(b, g_stream));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Non-finite (or never written: poisoned NaN) outputs of the prompt.
unsigned long long NonFinite(const Prompt& pr) {
  unsigned long long* bad = DevAlloc<unsigned long long>(1);
  CK(cudaMemsetAsync(bad, 0, sizeof(*bad), g_stream));
  CountNonFinite<<<1024, 256, 0, g_stream>>>(pr.o, pr.q_elems(), bad);
  CK(cudaGetLastError());
  unsigned long long h = 0;
  CK(cudaMemcpyAsync(&h, bad, sizeof(h), cudaMemcpyDeviceToHost, g_stream));
  CK(cudaStreamSynchronize(g_stream));
  CK(cudaFree(bad));
  return h;
}

// Checks the run's outputs (already computed into pr.o / pr.lse) against the CPU reference,
// chunk by chunk, each KV head's group on its own thread. Per (query, query head) the normwise
// relative error of o must be <= 2.5e-2 (P is rounded to bf16 before PV, as in the GPU tests)
// and lse within 1e-3 relative. Returns false (and says why) on any mismatch.
bool CheckOutputs(int T, int page, const std::vector<int32_t>& phys, Mode mode, int chunk,
                  const std::vector<Chunk>& chunks, const std::vector<uint16_t>& pool,
                  const std::vector<uint16_t>& q, const std::vector<uint16_t>& o,
                  const std::vector<float>& lse) {
  const std::vector<uint8_t> heads = StreamingHeads(mode);
  std::vector<double> worst(kKvHeads, 0.0);
  std::vector<std::string> err(kKvHeads);
  for (const Chunk& c : chunks) {
    std::vector<std::thread> threads;
    for (int h = 0; h < kKvHeads; ++h) {
      threads.emplace_back([&, h] {
        if (!err[h].empty()) return;
        // KV head h alone: the pool viewed with one KV head at h's offset, its query group
        // repacked to [n, kGroup, kDim].
        pk::PrefillParams p;
        p.kv = pk::PackedPagedKV(pk::DType::kBFloat16, T / page, page, kKvHeads, kDim, pool.data());
        p.kv.k += h * p.kv.stride_head;
        p.kv.v += h * p.kv.stride_head;
        p.kv.num_kv_heads = 1;
        p.table = {1, c.indptr.data(), phys.data(), c.last.data()};
        p.batch = 1;
        p.num_qo_heads = kGroup;
        p.q_indptr = c.q_indptr.data();
        std::vector<uint16_t> qh(size_t{1} * c.n * kGroup * kDim), oh(qh.size());
        std::vector<float> lh(size_t{1} * c.n * kGroup);
        for (int i = 0; i < c.n; ++i) {
          std::copy_n(q.data() + (size_t{1} * (c.start + i) * kQoHeads + h * kGroup) * kDim,
                      kGroup * kDim, qh.data() + size_t{1} * i * kGroup * kDim);
        }
        p.q = qh.data();
        p.o = oh.data();
        p.lse = lh.data();
        p.is_streaming = Streams(mode) ? &heads[h] : nullptr;
        p.sink_tokens = Streams(mode) ? kSink : 0;
        p.window_tokens = Streams(mode) ? kWindow : 0;
        std::vector<int32_t> sel_indptr, sel_pages;
        if (Selects(mode)) {
          sel_pages.assign(c.sel_pages.begin() + c.sel_indptr[h],
                           c.sel_pages.begin() + c.sel_indptr[h + 1]);
          sel_indptr = {0, static_cast<int32_t>(sel_pages.size())};
          sel_pages.push_back(0);  // past the row's end: keeps data() non-null when it is empty
          p.select_indptr = sel_indptr.data();
          p.select_pages = sel_pages.data();
        }
        if (const absl::Status s = pk::BlockSparsePrefillReference(p); !s.ok()) {
          err[h] = "reference: " + s.ToString();
          return;
        }
        for (int i = 0; i < c.n && err[h].empty(); ++i) {
          for (int g = 0; g < kGroup; ++g) {
            const size_t row = size_t{1} * (c.start + i) * kQoHeads + h * kGroup + g;
            const size_t ref_row = size_t{1} * i * kGroup + g;
            double num = 0, den = 0;
            for (int d = 0; d < kDim; ++d) {
              const double r = pk::Bf16ToFloat(oh[ref_row * kDim + d]);
              const double x = pk::Bf16ToFloat(o[row * kDim + d]);
              num += (x - r) * (x - r);
              den += r * r;
            }
            const double e = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
            worst[h] = std::max(worst[h], e);
            const double lr = lh[ref_row], lg = lse[row];
            const bool lse_ok = std::isinf(lr) ? (std::isinf(lg) && lg < 0)
                                               : std::fabs(lg - lr) <= 1e-3 * (1 + std::fabs(lr));
            if (!(e <= 2.5e-2) || !lse_ok) {
              err[h] = "query " + std::to_string(c.start + i) + " head " +
                       std::to_string(h * kGroup + g) + ": rel err " + std::to_string(e) +
                       ", lse " + std::to_string(lg) + " vs " + std::to_string(lr);
              break;
            }
          }
        }
      });
    }
    for (auto& t : threads) t.join();
  }
  const double w = *std::max_element(worst.begin(), worst.end());
  for (int h = 0; h < kKvHeads; ++h) {
    if (!err[h].empty()) {
      std::printf("check FAILED: %s, chunks of %d: KV head %d, %s\n", ModeName(mode), chunk, h,
                  err[h].c_str());
      return false;
    }
  }
  std::printf("check ok: %s, T=%d, chunks of %d: worst normwise rel err %.2e\n", ModeName(mode), T,
              chunk, w);
  return true;
}

bool CheckAgainstReference(const Prompt& pr, const Run& run) {
  return CheckOutputs(pr.T, pr.page, pr.phys, run.mode, run.chunk, run.chunks,
                      HostCopy(pr.pool, pr.pool_elems()), HostCopy(pr.q, pr.q_elems()),
                      HostCopy(pr.o, pr.q_elems()), HostCopy(pr.lse, size_t{1} * pr.T * kQoHeads));
}

std::map<int, double> LoadSdpa(const char* path) {
  std::map<int, double> m;
  if (path == nullptr) return m;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    char tag[64];
    int t = 0;
    double ms = 0;
    if (std::sscanf(line.c_str(), "%63s %d %lf", tag, &t, &ms) == 3 &&
        std::string(tag) == "sdpa_causal") {
      m[t] = ms;
    }
  }
  return m;
}

double CausalFlops(int T) { return 4.0 * (double(T) * T / 2) * kQoHeads * kDim; }

std::string Fmt(const char* f, double x) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), f, x);
  return buf;
}

struct Row {
  int T;
  std::string mode, prefill;
  double ms, tflops, sdpa_ms;
  std::string goal;
};

}  // namespace

int main(int argc, char** argv) {
  CK(cudaStreamCreate(&g_stream));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  const auto sdpa = LoadSdpa(argc > 1 ? argv[1] : nullptr);
  if (argc > 1 && sdpa.empty()) std::printf("note: no sdpa_causal lines in %s\n", argv[1]);
  std::mt19937 rng(2026);
  const std::vector<Mode> modes = {Mode::kDense, Mode::kSelect, Mode::kStreaming,
                                   Mode::kStreamingSelect};

  // 1. The page size and query tile, dense 32K in one chunk: the fastest is used below.
  int page = 16, tile_q = 64;
  {
    double best = 0;
    std::printf("\nconfig sweep: dense causal prefill, T=32768, one chunk\n");
    for (int ps : {16, 32, 64, 128}) {
      Prompt pr = MakePrompt(32768, ps, rng, false);
      for (int tq : {64, 128}) {
        Run run = MakeRun(pr, Mode::kDense, pr.T, tq, kBudgetTokens, rng);
        pr.PoisonO();
        const double ms = MedianMs(run, 2, 7);
        if (const unsigned long long bad = NonFinite(pr); bad != 0) {
          std::printf("FAILED: page %d, tile_q %d: %llu non-finite or unwritten outputs\n", ps, tq,
                      bad);
          return 1;
        }
        std::printf("  page %3d, tile_q %3d: %8.3f ms  %6.1f TFLOP/s\n", ps, tq, ms,
                    CausalFlops(pr.T) / (ms * 1e-3) / 1e12);
        if (best == 0 || ms < best) {
          best = ms;
          page = ps;
          tile_q = tq;
        }
        FreeRun(run);
      }
      FreePrompt(pr);
    }
    std::printf("using page %d, tile_q %d (fastest above)\n", page, tile_q);
  }

  // 2. Correctness at T = 2048 against the CPU reference, every mode, one chunk and chunks of
  // 512 (selection needs a context, so its one-chunk run is the plain mode); budget 512 tokens so
  // the selection drops pages.
  {
    std::printf("\ncorrectness: T=2048, page %d, tile_q %d\n", page, tile_q);
    Prompt pr = MakePrompt(2048, page, rng, true);
    bool ok = true;
    for (Mode m : modes) {
      for (int chunk : {2048, 512}) {
        if (Selects(m) && chunk == 2048) continue;
        Run run = MakeRun(pr, m, chunk, tile_q, 512, rng);
        pr.PoisonO();
        Enqueue(run);
        CK(cudaStreamSynchronize(g_stream));
        ok = CheckAgainstReference(pr, run) && ok;
        FreeRun(run);
      }
    }
    FreePrompt(pr);
    if (!ok) return 1;
  }

  // 3. The benchmark.
  std::vector<Row> rows;
  for (int T : {32768, 131072}) {
    Prompt pr = MakePrompt(T, page, rng, false);
    const int warmup = T > 32768 ? 1 : 2, reps = T > 32768 ? 5 : 9;
    const auto it = sdpa.find(T);
    const double sdpa_ms = it == sdpa.end() ? 0 : it->second;
    for (Mode m : modes) {
      for (int chunk : {T, kChunk}) {
        if (Selects(m) && chunk == T) continue;
        Run run = MakeRun(pr, m, chunk, tile_q, kBudgetTokens, rng);
        pr.PoisonO();
        const double ms = MedianMs(run, warmup, reps);
        const unsigned long long bad = NonFinite(pr);
        if (bad != 0) {
          std::printf("FAILED: %s T=%d chunks of %d: %llu non-finite or unwritten outputs\n",
                      ModeName(m), T, chunk, bad);
          return 1;
        }
        const std::string prefill =
            chunk == T ? "one chunk"
                       : std::to_string(T / chunk) + " chunks of " + std::to_string(chunk);
        const double tflops = m == Mode::kDense ? CausalFlops(T) / (ms * 1e-3) / 1e12 : 0;
        rows.push_back({T, ModeName(m), prefill, ms, tflops, sdpa_ms,
                        m == Mode::kStreaming ? ">= 2x SDPA" : "-"});
        std::printf("T=%6d %-26s %-20s %9.3f ms", T, ModeName(m), prefill.c_str(), ms);
        if (tflops > 0) std::printf("  %6.1f TFLOP/s", tflops);
        if (sdpa_ms > 0) std::printf("  SDPA/ours %.2fx", sdpa_ms / ms);
        std::printf("\n");
        std::fflush(stdout);
        FreeRun(run);
      }
    }
    FreePrompt(pr);
  }

  std::printf(
      "\nbf16, 32 query / 8 KV heads, head_dim 128, batch 1, page %d, tile_q %d; streaming heads "
      "= KV heads 0,2,4,6 (sink %d + window %d tokens); selection = %d context tokens per dense "
      "KV head. TFLOP/s (dense rows) = 4 * T^2/2 * 32 * 128 / time; SDPA = whole-prompt causal.\n",
      page, tile_q, kSink, kWindow, kBudgetTokens);
  std::printf(
      "\n| T | heads | prefill | ms | TFLOP/s | SDPA causal ms | SDPA / ours | goal |\n"
      "|---|---|---|---|---|---|---|---|\n");
  for (const Row& r : rows) {
    std::printf("| %d | %s | %s | %.3f | %s | %s | %s | %s |\n", r.T, r.mode.c_str(),
                r.prefill.c_str(), r.ms, r.tflops > 0 ? Fmt("%.1f", r.tflops).c_str() : "-",
                r.sdpa_ms > 0 ? Fmt("%.3f", r.sdpa_ms).c_str() : "-",
                r.sdpa_ms > 0 ? Fmt("%.2fx", r.sdpa_ms / r.ms).c_str() : "-", r.goal.c_str());
  }
  return 0;
}
