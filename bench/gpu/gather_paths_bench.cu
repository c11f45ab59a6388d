// How fast can scattered head-pages move from a pinned host arena into a GPU pool? The decode
// worker's fetch gathers one KV head of a page at a time: K and V halves of 4 KiB each (16
// tokens x 128 dims x bf16) at scattered places of the store's host arena. This compares, at the
// same bytes and in one process:
//   contiguous   one cudaMemcpyAsync of all the bytes (the PCIe ceiling);
//   kernel       the worker's path: one block per head-page reading the mapped arena (zero-copy);
//   batch        cudaMemcpyBatchAsync: one copy-engine descriptor per 4 KiB half;
//   verified     the worker's own kernel (kernels::gpu::GatherHeadPages: HeadPageChecksum of what
//                it wrote, a verdict per head-page; the expected sums here are zeros, so every
//                verdict is "bad", which costs the kernel nothing);
//   kernel-page  the kernel reading whole 64 KiB pages (all heads) instead: same bytes, fewer,
//                larger pieces;
// over arenas allocated five ways: anonymous mmap + cudaHostRegister, the same advised for
// transparent huge pages, cudaHostAlloc, and a memfd mapped shared + cudaHostRegister (what the
// store's host tier does), with and without huge-page advice. Prints GB/s (bytes moved / median
// time).
//
//   cmake --build <build> --target gather_paths_bench   (links pagoda_kernels_cuda)
//   ./gather_paths_bench [arena GiB = 16] [head-pages per gather = 3206]
#include <cuda_runtime.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "pagoda/kernels/cuda.h"
#include "pagoda/kernels/params.h"

#define CHECK(x)                                                                             \
  do {                                                                                       \
    cudaError_t e = (x);                                                                     \
    if (e != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e)); \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)

namespace {

constexpr int64_t kHalf = 4096;                // one KV head's K (or V) of a 16-token page
constexpr int kHeads = 8;                      // KV heads of a page
constexpr int64_t kPage = 2 * kHeads * kHalf;  // 64 KiB: K of every head, then V

// Copy i: `bytes` at src + src_off[i] -> dst + dst_off[i], in 16-byte words, one block per copy.
__global__ void GatherKernel(const uint8_t* src, const int64_t* src_off, uint8_t* dst,
                             const int64_t* dst_off, int64_t bytes) {
  const uint4* s = reinterpret_cast<const uint4*>(src + src_off[blockIdx.x]);
  uint4* d = reinterpret_cast<uint4*>(dst + dst_off[blockIdx.x]);
  for (int64_t w = threadIdx.x; w < bytes / 16; w += blockDim.x) d[w] = s[w];
}

struct Arena {
  uint8_t* p = nullptr;
  int64_t bytes = 0;
  int kind = 0;  // 0 register, 1 register + THP advice, 2 cudaHostAlloc, 3 memfd, 4 memfd + THP
  int fd = -1;
};

Arena MakeArena(int kind, int64_t bytes) {
  Arena a;
  a.bytes = bytes;
  a.kind = kind;
  if (kind == 2) {
    CHECK(cudaHostAlloc(reinterpret_cast<void**>(&a.p), bytes, cudaHostAllocMapped));
  } else if (kind >= 3) {
    a.fd = memfd_create("gather-bench", MFD_CLOEXEC);
    if (a.fd < 0 || ftruncate(a.fd, bytes) != 0) std::exit(2);
    a.p = static_cast<uint8_t*>(mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, a.fd, 0));
    if (a.p == MAP_FAILED) std::exit(2);
    if (kind == 4) madvise(a.p, bytes, MADV_HUGEPAGE);
    CHECK(cudaHostRegister(a.p, bytes, cudaHostRegisterMapped | cudaHostRegisterPortable));
  } else {
    a.p = static_cast<uint8_t*>(
        mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (a.p == MAP_FAILED) std::exit(2);
    if (kind == 1) madvise(a.p, bytes, MADV_HUGEPAGE);
    CHECK(cudaHostRegister(a.p, bytes, cudaHostRegisterMapped | cudaHostRegisterPortable));
  }
  for (int64_t o = 0; o < bytes; o += 4096) a.p[o] = static_cast<uint8_t>(o >> 12);
  return a;
}

void FreeArena(Arena& a) {
  if (a.kind == 2) {
    CHECK(cudaFreeHost(a.p));
  } else {
    CHECK(cudaHostUnregister(a.p));
    munmap(a.p, a.bytes);
    if (a.fd >= 0) close(a.fd);
  }
}

template <typename F>
double MedianMs(F&& f, cudaStream_t s, int reps = 11) {
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  f();  // warm
  CHECK(cudaStreamSynchronize(s));
  std::vector<float> ms;
  for (int r = 0; r < reps; ++r) {
    CHECK(cudaEventRecord(a, s));
    f();
    CHECK(cudaEventRecord(b, s));
    CHECK(cudaEventSynchronize(b));
    float t = 0;
    CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  CHECK(cudaEventDestroy(a));
  CHECK(cudaEventDestroy(b));
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t arena_bytes = (argc > 1 ? std::atoll(argv[1]) : 16) << 30;
  const int n = argc > 2 ? std::atoi(argv[2]) : 3206;  // head-pages (a B=3 128K quest layer)
  const int64_t pages = arena_bytes / kPage;
  cudaStream_t s;
  CHECK(cudaStreamCreate(&s));
  uint8_t* pool = nullptr;
  const int64_t moved = int64_t{n} * 2 * kHalf;
  CHECK(cudaMalloc(&pool, moved + kPage));
  uint8_t* bounce = nullptr;  // contiguous source for the ceiling
  CHECK(cudaHostAlloc(reinterpret_cast<void**>(&bounce), moved, cudaHostAllocDefault));

  // Random head-pages: (page, head) without repeats; halves at page*64K + h*4K and + (8+h)*4K.
  std::mt19937_64 rng(1);
  std::vector<int64_t> src_half(2 * n), dst_half(2 * n), src_page, dst_page;
  for (int i = 0; i < n; ++i) {
    const int64_t page = static_cast<int64_t>(rng() % pages);
    const int h = static_cast<int>(rng() % kHeads);
    src_half[2 * i] = page * kPage + h * kHalf;
    src_half[2 * i + 1] = page * kPage + (kHeads + h) * kHalf;
    dst_half[2 * i] = 2 * i * kHalf;
    dst_half[2 * i + 1] = (2 * i + 1) * kHalf;
  }
  const int whole = static_cast<int>(moved / kPage);  // same bytes as whole pages
  for (int i = 0; i < whole; ++i) {
    src_page.push_back(static_cast<int64_t>(rng() % pages) * kPage);
    dst_page.push_back(i * kPage);
  }
  int64_t *d_src_half, *d_dst_half, *d_src_page, *d_dst_page;
  CHECK(cudaMalloc(&d_src_half, 2 * n * 8));
  CHECK(cudaMalloc(&d_dst_half, 2 * n * 8));
  CHECK(cudaMalloc(&d_src_page, whole * 8));
  CHECK(cudaMalloc(&d_dst_page, whole * 8));
  CHECK(cudaMemcpy(d_src_half, src_half.data(), 2 * n * 8, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(d_dst_half, dst_half.data(), 2 * n * 8, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(d_src_page, src_page.data(), whole * 8, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(d_dst_page, dst_page.data(), whole * 8, cudaMemcpyHostToDevice));

  std::printf("gather paths: %d head-pages (%d halves of 4 KiB, %.1f MiB) from a %lld GiB arena\n",
              n, 2 * n, moved / 1048576.0, static_cast<long long>(arena_bytes >> 30));
  // The worker's gather over the same head-pages: one KV head of n slots, slot i <- head-page i.
  std::vector<int64_t> src_k(n), src_v(n);
  std::vector<int32_t> dst_head(n, 0), dst_slot(n);
  for (int i = 0; i < n; ++i) {
    src_k[i] = src_half[2 * i];
    src_v[i] = src_half[2 * i + 1];
    dst_slot[i] = i;
  }
  int64_t *d_src_k, *d_src_v;
  int32_t *d_dst_head, *d_dst_slot;
  uint64_t* d_expected;
  uint8_t* d_bad;
  CHECK(cudaMalloc(&d_src_k, n * 8));
  CHECK(cudaMalloc(&d_src_v, n * 8));
  CHECK(cudaMalloc(&d_dst_head, n * 4));
  CHECK(cudaMalloc(&d_dst_slot, n * 4));
  CHECK(cudaMalloc(&d_expected, n * 8));
  CHECK(cudaMalloc(&d_bad, n));
  CHECK(cudaMemcpy(d_src_k, src_k.data(), n * 8, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(d_src_v, src_v.data(), n * 8, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(d_dst_head, dst_head.data(), n * 4, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(d_dst_slot, dst_slot.data(), n * 4, cudaMemcpyHostToDevice));
  CHECK(cudaMemset(d_expected, 0, n * 8));
  std::printf(
      "| arena | contiguous GB/s | kernel (4 KiB halves) | verified (the worker's) | "
      "cudaMemcpyBatchAsync (4 KiB) | kernel (64 KiB pages) |\n|---|---|---|---|---|---|\n");
  const char* names[] = {"anonymous + cudaHostRegister", "same + MADV_HUGEPAGE", "cudaHostAlloc",
                         "memfd shared + cudaHostRegister (the store's)", "same + MADV_HUGEPAGE"};
  for (int kind = 0; kind < 5; ++kind) {
    Arena a = MakeArena(kind, arena_bytes);
    uint8_t* dev_arena = nullptr;
    CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&dev_arena), a.p, 0));
    const double contiguous = MedianMs(
        [&] { CHECK(cudaMemcpyAsync(pool, bounce, moved, cudaMemcpyHostToDevice, s)); }, s);
    const double kernel = MedianMs(
        [&] { GatherKernel<<<2 * n, 128, 0, s>>>(dev_arena, d_src_half, pool, d_dst_half, kHalf); },
        s);
    pagoda::kernels::HeadGatherParams hp;
    hp.src = dev_arena;
    hp.src_bytes = a.bytes;
    hp.pool = pool;
    hp.num_kv_heads = 1;
    hp.pool_slots = n;
    hp.half_bytes = kHalf;
    hp.num_copies = n;
    hp.src_k = d_src_k;
    hp.src_v = d_src_v;
    hp.dst_head = d_dst_head;
    hp.dst_slot = d_dst_slot;
    hp.expected = d_expected;
    hp.bad = d_bad;
    const double verified = MedianMs(
        [&] {
          const absl::Status st = pagoda::kernels::gpu::GatherHeadPages(hp, s);
          if (!st.ok()) {
            std::fprintf(stderr, "GatherHeadPages: %s\n", st.ToString().c_str());
            std::exit(1);
          }
        },
        s);
    std::vector<void*> dsts(2 * n);
    std::vector<const void*> srcs(2 * n);
    std::vector<size_t> sizes(2 * n, kHalf);
    for (int i = 0; i < 2 * n; ++i) {
      dsts[i] = pool + dst_half[i];
      srcs[i] = a.p + src_half[i];
    }
    cudaMemcpyAttributes attr = {};
    attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
    size_t attr_idx = 0;
    double batch = -1;
    cudaError_t probe =
        cudaMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(), 2 * n, &attr, &attr_idx, 1, s);
    if (probe == cudaSuccess) {
      CHECK(cudaStreamSynchronize(s));
      batch = MedianMs(
          [&] {
            CHECK(cudaMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(), 2 * n, &attr,
                                       &attr_idx, 1, s));
          },
          s);
    } else {
      std::fprintf(stderr, "cudaMemcpyBatchAsync: %s\n", cudaGetErrorString(probe));
      (void)cudaGetLastError();
    }
    const double pagewise = MedianMs(
        [&] { GatherKernel<<<whole, 512, 0, s>>>(dev_arena, d_src_page, pool, d_dst_page, kPage); },
        s);
    CHECK(cudaGetLastError());
    auto gbs = [&](double ms) { return ms > 0 ? moved / (ms * 1e6) : 0.0; };
    std::printf(
        "| %s | %.1f (%.3f ms) | %.1f (%.3f ms) | %.1f (%.3f ms) | %.1f (%.3f ms) | %.1f (%.3f ms) "
        "|\n",
        names[kind], gbs(contiguous), contiguous, gbs(kernel), kernel, gbs(verified), verified,
        gbs(batch), batch, gbs(pagewise), pagewise);
    std::fflush(stdout);
    FreeArena(a);
  }
  return 0;
}
