// GPU transport benchmarks (bench/gpu/run.sh runs it on the GPU machine). Every line is a ratio
// against a baseline measured in the same run; medians of several repetitions (CUDA events).
//  1. scattered pages pinned host <-> GPU: CopyPagesAsync (one batched DMA), the kernels' gather /
//     scatter (kernels/, reading or writing pinned host memory directly), and one cudaMemcpyAsync
//     per page, against ONE contiguous cudaMemcpyAsync of the same bytes (goal >= 0.9x);
//  2. scattered pages GPU0 -> GPU1 (peer) with CopyPagesAsync against cudaMemcpyPeerAsync of the
//     same bytes in one piece (goal >= 0.9x);
//  3. prefill -> decode: a sender process on GPU0 "computes" (writes) each layer and publishes it
//     (KvHandoffSender); this process on GPU1 receives every layer into its own scattered pool
//     slots (KvHandoffReceiver, IPC + peer copy). Reported: time from the last layer's pages being
//     computed to all pages usable on GPU1, against total bytes / measured peer bandwidth. Every
//     received byte is checked.
#include <cuda_runtime_api.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "pagoda/kernels/cuda.h"
#include "pagoda/transport/cuda_ipc.h"
#include "pagoda/transport/gpu_copy.h"
#include "pagoda/transport/kv_handoff.h"
#include "pagoda/transport/pool_copy.h"

namespace {

#define CHECK_CUDA(x)                                                                         \
  do {                                                                                        \
    cudaError_t e_ = (x);                                                                     \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)
#define CHECK_OK(x)                                                                          \
  do {                                                                                       \
    auto s_ = (x);                                                                           \
    if (!s_.ok()) {                                                                          \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, s_.ToString().c_str()); \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)

constexpr int kReps = 15;

double NowSec() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Median milliseconds of `fn` (which enqueues on `s`) over kReps, after 3 warm-ups.
template <typename F>
double TimeMs(cudaStream_t s, F fn) {
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  std::vector<float> ms;
  for (int r = 0; r < kReps + 3; ++r) {
    CHECK_CUDA(cudaEventRecord(a, s));
    fn();
    CHECK_CUDA(cudaEventRecord(b, s));
    CHECK_CUDA(cudaEventSynchronize(b));
    float t;
    CHECK_CUDA(cudaEventElapsedTime(&t, a, b));
    if (r >= 3) ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

void Row(const char* what, size_t page, size_t n, double ms, double base_ms, const char* base) {
  double gbps = n * page / (ms * 1e-3) / 1e9;
  std::printf("| %s | %zu KiB x %zu | %.3f ms | %.1f GB/s | %.3fx of %s |\n", what, page >> 10, n,
              ms, gbps, base_ms / ms, base);
  std::fflush(stdout);
}

std::vector<int32_t> RandomSlots(size_t n, size_t slots, uint32_t seed) {
  std::vector<int32_t> v(slots);
  std::iota(v.begin(), v.end(), 0);
  std::mt19937 rng(seed);
  std::shuffle(v.begin(), v.end(), rng);
  v.resize(n);
  return v;
}

void HostDevice(size_t page, size_t n, size_t slots) {
  cudaStream_t s;
  CHECK_CUDA(cudaSetDevice(0));
  CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  uint8_t *host, *dev, *staging;
  int32_t* dev_idx;
  CHECK_CUDA(cudaHostAlloc(reinterpret_cast<void**>(&host), slots * page, cudaHostAllocDefault));
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&dev), slots * page));
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&staging), n * page));
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&dev_idx), n * sizeof(int32_t)));
  std::memset(host, 0x5a, slots * page);
  auto hs = RandomSlots(n, slots, 1), ds = RandomSlots(n, slots, 2);
  CHECK_CUDA(cudaMemcpy(dev_idx, hs.data(), n * sizeof(int32_t), cudaMemcpyHostToDevice));
  std::vector<pagoda::PageCopy> h2d(n), d2h(n);
  for (size_t i = 0; i < n; ++i) {
    h2d[i] = {dev + ds[i] * page, host + hs[i] * page};
    d2h[i] = {host + hs[i] * page, dev + ds[i] * page};
  }
  pagoda::kernels::PageCopyParams kp;
  kp.pool = host;  // pinned host memory, reached by the kernel through UVA
  kp.pool_pages = slots;
  kp.pool_stride_bytes = page;
  kp.page_bytes = page;
  kp.pages = dev_idx;
  kp.num_pages = static_cast<int32_t>(n);
  kp.staging = staging;

  double base = TimeMs(
      s, [&] { CHECK_CUDA(cudaMemcpyAsync(dev, host, n * page, cudaMemcpyHostToDevice, s)); });
  Row("H2D contiguous cudaMemcpy (baseline)", page, n, base, base, "contiguous");
  Row("H2D scattered CopyPagesAsync (batched DMA)", page, n,
      TimeMs(s, [&] { CHECK_OK(pagoda::CopyPagesAsync(h2d, page, s)); }), base, "contiguous");
  Row("H2D scattered kernels::GatherPages (host pool -> GPU)", page, n,
      TimeMs(s, [&] { CHECK_OK(pagoda::kernels::gpu::GatherPages(kp, s)); }), base, "contiguous");
  Row("H2D scattered one cudaMemcpyAsync per page", page, n,
      TimeMs(s, [&] { CHECK_OK(pagoda::CopyPagesOneByOne(h2d, page, s)); }), base, "contiguous");
  base = TimeMs(
      s, [&] { CHECK_CUDA(cudaMemcpyAsync(host, dev, n * page, cudaMemcpyDeviceToHost, s)); });
  Row("D2H contiguous cudaMemcpy (baseline)", page, n, base, base, "contiguous");
  Row("D2H scattered CopyPagesAsync (batched DMA)", page, n,
      TimeMs(s, [&] { CHECK_OK(pagoda::CopyPagesAsync(d2h, page, s)); }), base, "contiguous");
  Row("D2H scattered kernels::ScatterPages (GPU -> host pool)", page, n,
      TimeMs(s, [&] { CHECK_OK(pagoda::kernels::gpu::ScatterPages(kp, s)); }), base, "contiguous");
  Row("D2H scattered one cudaMemcpyAsync per page", page, n,
      TimeMs(s, [&] { CHECK_OK(pagoda::CopyPagesOneByOne(d2h, page, s)); }), base, "contiguous");
  cudaFreeHost(host);
  cudaFree(dev);
  cudaFree(staging);
  cudaFree(dev_idx);
  cudaStreamDestroy(s);
}

// Bytes/second GPU0 -> GPU1 with one cudaMemcpyPeerAsync of `bytes`.
double PeerBandwidth(size_t bytes) {
  void *a, *b;
  CHECK_CUDA(cudaSetDevice(0));
  CHECK_CUDA(cudaMalloc(&a, bytes));
  CHECK_CUDA(cudaSetDevice(1));
  CHECK_CUDA(cudaMalloc(&b, bytes));
  cudaStream_t s;
  CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  double ms = TimeMs(s, [&] { CHECK_CUDA(cudaMemcpyPeerAsync(b, 1, a, 0, bytes, s)); });
  cudaFree(b);
  cudaStreamDestroy(s);
  CHECK_CUDA(cudaSetDevice(0));
  cudaFree(a);
  return bytes / (ms * 1e-3);
}

void Peer(size_t page, size_t n, size_t slots) {
  CHECK_OK(pagoda::EnablePeerAccess(0, 1));
  CHECK_OK(pagoda::EnablePeerAccess(1, 0));
  uint8_t *src, *dst;
  CHECK_CUDA(cudaSetDevice(0));
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&src), slots * page));
  CHECK_CUDA(cudaSetDevice(1));
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&dst), slots * page));
  cudaStream_t s;
  CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  auto ss = RandomSlots(n, slots, 3), ds = RandomSlots(n, slots, 4);
  std::vector<pagoda::PageCopy> c(n);
  for (size_t i = 0; i < n; ++i) c[i] = {dst + ds[i] * page, src + ss[i] * page};
  double base = TimeMs(s, [&] { CHECK_CUDA(cudaMemcpyPeerAsync(dst, 1, src, 0, n * page, s)); });
  Row("GPU0->GPU1 contiguous cudaMemcpyPeer (baseline)", page, n, base, base, "peer");
  Row("GPU0->GPU1 scattered CopyPagesAsync", page, n,
      TimeMs(s, [&] { CHECK_OK(pagoda::CopyPagesAsync(c, page, s)); }), base, "peer");
  Row("GPU0->GPU1 scattered one cudaMemcpyPeerAsync per page", page, n,
      TimeMs(s, [&] { CHECK_OK(pagoda::CopyPagesOneByOne(c, page, s)); }), base, "peer");
  // The kernels' gather reading GPU0's pool over NVLink into GPU1 staging, then (optionally) the
  // scatter into GPU1's pool slots; and the one-pass pool -> pool kernel.
  int32_t *src_idx, *dst_idx;
  uint8_t* staging;
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&src_idx), n * sizeof(int32_t)));
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&dst_idx), n * sizeof(int32_t)));
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&staging), n * page));
  CHECK_CUDA(cudaMemcpy(src_idx, ss.data(), n * sizeof(int32_t), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(dst_idx, ds.data(), n * sizeof(int32_t), cudaMemcpyHostToDevice));
  pagoda::PagePool sp{src, int64_t(slots), int64_t(page)}, dp{dst, int64_t(slots), int64_t(page)};
  Row("GPU0->GPU1 scattered kernels gather (pool -> contiguous)", page, n,
      TimeMs(s,
             [&] {
               CHECK_OK(pagoda::CopyPoolPagesAsync(sp, src_idx, dp, nullptr, n, page, staging, s));
             }),
      base, "peer");
  Row("GPU0->GPU1 scattered pool -> pool, two passes (gather to staging + scatter)", page, n,
      TimeMs(s,
             [&] {
               CHECK_OK(pagoda::CopyPoolPagesAsync(sp, src_idx, dp, nullptr, n, page, staging, s));
               CHECK_OK(pagoda::CopyPoolPagesAsync(sp, nullptr, dp, dst_idx, n, page, staging, s));
             }),
      base, "peer");
  Row("GPU0->GPU1 scattered pool -> pool, one pass (CopyPoolToPool)", page, n,
      TimeMs(s,
             [&] {
               CHECK_OK(pagoda::CopyPoolPagesAsync(sp, src_idx, dp, dst_idx, n, page, nullptr, s));
             }),
      base, "peer");
  // Bytes right: page ss[i] of GPU0 (filled with its index) must sit in slot ds[i] of GPU1.
  {
    std::vector<uint32_t> fill(page / 4);
    CHECK_CUDA(cudaSetDevice(0));
    for (size_t i = 0; i < n; ++i) {
      std::fill(fill.begin(), fill.end(), uint32_t(ss[i] * 2654435761u));
      CHECK_CUDA(cudaMemcpy(src + size_t(ss[i]) * page, fill.data(), page, cudaMemcpyHostToDevice));
    }
    CHECK_CUDA(cudaSetDevice(1));
    CHECK_OK(pagoda::CopyPoolPagesAsync(sp, src_idx, dp, dst_idx, n, page, nullptr, s));
    CHECK_CUDA(cudaStreamSynchronize(s));
    size_t bad = 0;
    for (size_t i = 0; i < n; ++i) {
      CHECK_CUDA(cudaMemcpy(fill.data(), dst + size_t(ds[i]) * page, page, cudaMemcpyDeviceToHost));
      for (uint32_t w : fill) bad += w != uint32_t(ss[i] * 2654435761u);
    }
    std::printf("| kernels pool -> pool peer copy check | %zu pages | | | wrong words: %zu |\n", n,
                bad);
    if (bad != 0) std::exit(1);
  }
  cudaFree(src_idx);
  cudaFree(dst_idx);
  cudaFree(staging);
  cudaFree(dst);
  cudaStreamDestroy(s);
  CHECK_CUDA(cudaSetDevice(0));
  cudaFree(src);
}

// Prefill -> decode shape: layers x pages of page bytes.
constexpr int kLayers = 32;
constexpr int kPagesPerLayer = 64;
constexpr size_t kPage = 64 << 10;
constexpr int kHandoffReps = 5;

uint64_t Word(int layer, int page, size_t w) {
  return (uint64_t(layer) << 48) ^ (uint64_t(page) << 32) ^ (w * 0x9e3779b97f4a7c15ULL);
}

// The prefill process: GPU0, a pool of 2x the pages; each layer is "computed" (written from a
// pinned host buffer) into scattered slots, then published.
int RunSender(const std::string& name, int go_fd, int t_fd) {
  CHECK_CUDA(cudaSetDevice(0));
  const size_t slots = 2 * kLayers * kPagesPerLayer;
  uint8_t *pool, *host;
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&pool), slots * kPage));
  const size_t layer_bytes = kPagesPerLayer * kPage;
  CHECK_CUDA(cudaHostAlloc(reinterpret_cast<void**>(&host), kLayers * layer_bytes, 0));
  for (int l = 0; l < kLayers; ++l) {
    for (int p = 0; p < kPagesPerLayer; ++p) {
      auto* w = reinterpret_cast<uint64_t*>(host + (size_t(l) * kPagesPerLayer + p) * kPage);
      for (size_t i = 0; i < kPage / 8; ++i) w[i] = Word(l, p, i);
    }
  }
  auto slot_of = RandomSlots(kLayers * kPagesPerLayer, slots, 9);
  auto tx =
      pagoda::KvHandoffSender::Create(name, pool, slots * kPage, {kLayers, kPagesPerLayer, kPage});
  CHECK_OK(tx.status());
  cudaStream_t s;
  CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  char go;
  if (read(go_fd, &go, 1) != 1) return 1;
  for (int r = 0; r < kHandoffReps; ++r) {
    for (int l = 0; l < kLayers; ++l) {
      std::vector<pagoda::PageCopy> c(kPagesPerLayer);
      std::vector<uint64_t> offs(kPagesPerLayer);
      for (int p = 0; p < kPagesPerLayer; ++p) {
        offs[p] = uint64_t(slot_of[l * kPagesPerLayer + p]) * kPage;
        c[p] = {pool + offs[p], host + (size_t(l) * kPagesPerLayer + p) * kPage};
      }
      CHECK_OK(pagoda::CopyPagesAsync(c, kPage, s));  // the layer's "compute"
      CHECK_OK((*tx)->PublishLayer(l, offs, s));
    }
    CHECK_CUDA(cudaStreamSynchronize(s));  // the last layer is computed now
    double t0 = NowSec();
    if (write(t_fd, &t0, sizeof(t0)) != sizeof(t0)) return 1;
    CHECK_OK((*tx)->WaitConsumed(absl::Seconds(30)));
  }
  tx->reset();
  cudaStreamDestroy(s);
  cudaFree(pool);
  cudaFreeHost(host);
  return 0;
}

int RunReceiver(const std::string& name, int go_fd, int t_fd, int device, double peer_bps) {
  CHECK_CUDA(cudaSetDevice(device));
  auto rx = pagoda::KvHandoffReceiver::Open(name, absl::Seconds(60));
  CHECK_OK(rx.status());
  const size_t slots = 2 * kLayers * kPagesPerLayer;
  uint8_t* pool;
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&pool), slots * kPage));
  CHECK_CUDA(cudaMemset(pool, 0, slots * kPage));
  auto dst_slot = RandomSlots(kLayers * kPagesPerLayer, slots, 11);
  cudaStream_t s;
  CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  if (write(go_fd, "g", 1) != 1) return 1;
  std::vector<double> lat_ms;
  for (int r = 0; r < kHandoffReps; ++r) {
    for (int l = 0; l < kLayers; ++l) {
      std::vector<void*> dst(kPagesPerLayer);
      for (int p = 0; p < kPagesPerLayer; ++p) {
        dst[p] = pool + size_t(dst_slot[l * kPagesPerLayer + p]) * kPage;
      }
      auto got = (*rx)->ReceiveLayer(l, dst, s, absl::Seconds(30));
      CHECK_OK(got.status());
    }
    CHECK_CUDA(cudaStreamSynchronize(s));
    double t1 = NowSec(), t0;
    if (read(t_fd, &t0, sizeof(t0)) != sizeof(t0)) return 1;
    lat_ms.push_back((t1 - t0) * 1e3);
  }
  // Every byte of every page, in the slot it was sent to.
  std::vector<uint64_t> back(kPage / 8);
  size_t bad = 0;
  for (int l = 0; l < kLayers; ++l) {
    for (int p = 0; p < kPagesPerLayer; ++p) {
      CHECK_CUDA(cudaMemcpy(back.data(), pool + size_t(dst_slot[l * kPagesPerLayer + p]) * kPage,
                            kPage, cudaMemcpyDeviceToHost));
      for (size_t i = 0; i < back.size(); ++i) bad += back[i] != Word(l, p, i);
    }
  }
  std::sort(lat_ms.begin(), lat_ms.end());
  const double total = double(kLayers) * kPagesPerLayer * kPage;
  const double ideal_ms = total / peer_bps * 1e3;
  const double med = lat_ms[lat_ms.size() / 2];
  std::printf(
      "| prefill->decode GPU0->GPU%d, %d layers x %d pages x %zu KiB | last layer computed -> all "
      "usable: %.3f ms (median of %d) | total bytes / peer bw = %.3f ms | %.2fx | wrong words: "
      "%zu |\n",
      device, kLayers, kPagesPerLayer, kPage >> 10, med, kHandoffReps, ideal_ms, ideal_ms / med,
      bad);
  cudaFree(pool);
  cudaStreamDestroy(s);
  return bad == 0 ? 0 : 1;
}

}  // namespace

int main() {
  // Fork the prefill process before this one touches CUDA.
  int go[2], tp[2];
  if (pipe(go) != 0 || pipe(tp) != 0) return 1;
  const std::string name = "bench-" + std::to_string(getpid());
  pid_t child = fork();
  if (child == 0) {
    close(go[1]);
    close(tp[0]);
    _exit(RunSender(name, go[0], tp[1]));
  }
  close(go[0]);
  close(tp[1]);

  int devices = 0;
  CHECK_CUDA(cudaGetDeviceCount(&devices));
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("# gpu_transport_bench: %d x %s\n", devices, prop.name);
  std::printf("| measurement | pages | time | bandwidth | ratio |\n|---|---|---|---|---|\n");
  for (size_t page : {size_t{16} << 10, size_t{64} << 10}) HostDevice(page, 1024, 4096);
  double peer_bps = 0;
  int rx_device = 0;
  if (devices >= 2) {
    for (size_t page : {size_t{16} << 10, size_t{64} << 10}) Peer(page, 1024, 4096);
    peer_bps = PeerBandwidth(size_t(kLayers) * kPagesPerLayer * kPage);
    rx_device = 1;
  } else {
    std::printf("| peer copies | skipped: one GPU | | | |\n");
    peer_bps = 0;
  }
  if (peer_bps == 0) {  // one GPU: the "peer" is the same device
    void *a, *b;
    size_t bytes = size_t(kLayers) * kPagesPerLayer * kPage;
    CHECK_CUDA(cudaMalloc(&a, bytes));
    CHECK_CUDA(cudaMalloc(&b, bytes));
    cudaStream_t s;
    CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    double ms = TimeMs(s, [&] { CHECK_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDefault, s)); });
    peer_bps = bytes / (ms * 1e-3);
    cudaFree(a);
    cudaFree(b);
    cudaStreamDestroy(s);
  }
  std::printf("| measured GPU0->GPU%d bandwidth | %.1f GB/s | | | |\n", rx_device, peer_bps / 1e9);
  int rc = RunReceiver(name, go[1], tp[0], rx_device, peer_bps);
  int status = 0;
  waitpid(child, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::fprintf(stderr, "sender process failed\n");
    rc = 1;
  }
  return rc;
}
