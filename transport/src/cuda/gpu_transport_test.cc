// GPU tests of transport's CUDA paths (run on the GPU machine by bench/gpu/run.sh; cross-process
// IPC and the prefill -> decode handoff are exercised, with byte checks, by
// bench/transport/gpu_transport_bench).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "pagoda/transport/cuda_ipc.h"
#include "pagoda/transport/gpu_copy.h"
#include "pagoda/transport/kv_handoff.h"
#include "pagoda/transport/pool_copy.h"

namespace pagoda {
namespace {

#define CUDA_OK(x) ASSERT_EQ((x), cudaSuccess) << #x

uint8_t Byte(uint64_t page, uint64_t i) {
  return static_cast<uint8_t>((page * 131 + i * 7 + (i >> 9)) ^ (page >> 3));
}

class GpuCopyTest : public ::testing::TestWithParam<size_t> {
 protected:
  void SetUp() override {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) GTEST_SKIP() << "no GPU";
    ASSERT_EQ(cudaStreamCreate(&stream_), cudaSuccess);
  }
  void TearDown() override {
    if (stream_) cudaStreamDestroy(stream_);
  }
  cudaStream_t stream_ = nullptr;
};

INSTANTIATE_TEST_SUITE_P(PageBytes, GpuCopyTest, ::testing::Values(16, 4096, 65536, 65536 + 16));

// Host pool -> device pool (scattered, some runs adjacent) -> back to another host pool, with the
// batched copy and the one-by-one copy: every page lands exactly in its slot, nothing else moves.
TEST_P(GpuCopyTest, ScatteredPagesRoundTripByteExact) {
  const size_t pb = GetParam();
  const size_t slots = 97, n = 61;
  uint8_t *host_src, *host_dst, *dev;
  CUDA_OK(cudaHostAlloc(reinterpret_cast<void**>(&host_src), slots * pb, cudaHostAllocDefault));
  CUDA_OK(cudaHostAlloc(reinterpret_cast<void**>(&host_dst), slots * pb, cudaHostAllocDefault));
  CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&dev), slots * pb));
  for (size_t s = 0; s < slots; ++s) {
    for (size_t i = 0; i < pb; ++i) host_src[s * pb + i] = Byte(s, i);
  }
  std::memset(host_dst, 0xEE, slots * pb);
  CUDA_OK(cudaMemset(dev, 0, slots * pb));
  std::vector<size_t> from(slots), to(slots);
  std::iota(from.begin(), from.end(), 0);
  std::iota(to.begin(), to.end(), 0);
  std::mt19937 rng(5);
  std::shuffle(from.begin(), from.end(), rng);
  std::shuffle(to.begin(), to.end(), rng);
  // Make a run adjacent on both sides so merging is exercised.
  from[1] = from[0] + 1 < slots ? from[0] + 1 : from[1];
  to[1] = to[0] + 1 < slots ? to[0] + 1 : to[1];
  std::vector<bool> used_to(slots);
  for (bool one_by_one : {false, true}) {
    std::vector<PageCopy> h2d, d2h;
    std::vector<size_t> src_slot, dst_slot;
    std::fill(used_to.begin(), used_to.end(), false);
    for (size_t k = 0; k < n; ++k) {
      if (used_to[to[k]]) continue;
      used_to[to[k]] = true;
      h2d.push_back({dev + to[k] * pb, host_src + from[k] * pb});
      d2h.push_back({host_dst + to[k] * pb, dev + to[k] * pb});
      src_slot.push_back(from[k]);
      dst_slot.push_back(to[k]);
    }
    auto copy = one_by_one ? CopyPagesOneByOne : CopyPagesAsync;
    ASSERT_TRUE(copy(h2d, pb, stream_).ok());
    ASSERT_TRUE(copy(d2h, pb, stream_).ok());
    CUDA_OK(cudaStreamSynchronize(stream_));
    for (size_t k = 0; k < dst_slot.size(); ++k) {
      for (size_t i = 0; i < pb; ++i) {
        ASSERT_EQ(host_dst[dst_slot[k] * pb + i], Byte(src_slot[k], i))
            << "page " << k << " byte " << i << (one_by_one ? " one-by-one" : " batched");
      }
    }
    for (size_t s = 0; s < slots; ++s) {
      if (!used_to[s]) {
        ASSERT_EQ(host_dst[s * pb], 0xEE) << "slot " << s << " was written";
      }
    }
    std::memset(host_dst, 0xEE, slots * pb);
  }
  cudaFreeHost(host_src);
  cudaFreeHost(host_dst);
  cudaFree(dev);
}

TEST_P(GpuCopyTest, BadBatchesAreRejectedBeforeAnythingIsEnqueued) {
  const size_t pb = GetParam();
  uint8_t* dev;
  CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&dev), 2 * pb));
  CUDA_OK(cudaMemset(dev, 0x11, 2 * pb));
  std::vector<uint8_t> host(pb, 0x22);
  EXPECT_EQ(CopyPagesAsync({}, pb, stream_).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CopyPagesAsync({{dev, host.data()}, {dev + pb, nullptr}}, pb, stream_).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CopyPagesAsync({{dev, host.data()}}, 0, stream_).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CopyPagesAsync({{dev, host.data()}}, pb, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  CUDA_OK(cudaStreamSynchronize(stream_));
  std::vector<uint8_t> back(2 * pb);
  CUDA_OK(cudaMemcpy(back.data(), dev, 2 * pb, cudaMemcpyDeviceToHost));
  for (uint8_t b : back) ASSERT_EQ(b, 0x11);  // the first (valid) copy did not run either
  cudaFree(dev);
}

// Pinned host pool -> device pool through the kernels (gather + scatter), slot for slot.
TEST_P(GpuCopyTest, PoolToPoolThroughKernelsIsByteExact) {
  const size_t pb = GetParam();
  const int32_t slots = 37, n = 20;
  uint8_t *host, *dev, *staging;
  int32_t *src_idx, *dst_idx;
  CUDA_OK(cudaHostAlloc(reinterpret_cast<void**>(&host), slots * pb, cudaHostAllocDefault));
  CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&dev), slots * pb));
  CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&staging), n * pb));
  CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&src_idx), n * 4));
  CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&dst_idx), n * 4));
  for (int32_t s = 0; s < slots; ++s) {
    for (size_t i = 0; i < pb; ++i) host[s * pb + i] = Byte(s, i);
  }
  CUDA_OK(cudaMemset(dev, 0x77, slots * pb));
  std::vector<int32_t> from(slots), to(slots);
  std::iota(from.begin(), from.end(), 0);
  std::iota(to.begin(), to.end(), 0);
  std::mt19937 rng(9);
  std::shuffle(from.begin(), from.end(), rng);
  std::shuffle(to.begin(), to.end(), rng);
  CUDA_OK(cudaMemcpy(src_idx, from.data(), n * 4, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(dst_idx, to.data(), n * 4, cudaMemcpyHostToDevice));
  PagePool hp{host, slots, int64_t(pb)}, dp{dev, slots, int64_t(pb)};
  ASSERT_TRUE(CopyPoolPagesAsync(hp, src_idx, dp, dst_idx, n, pb, staging, stream_).ok());
  CUDA_OK(cudaStreamSynchronize(stream_));
  std::vector<uint8_t> back(slots * pb);
  CUDA_OK(cudaMemcpy(back.data(), dev, slots * pb, cudaMemcpyDeviceToHost));
  std::vector<bool> hit(slots);
  for (int32_t k = 0; k < n; ++k) {
    hit[to[k]] = true;
    for (size_t i = 0; i < pb; ++i) ASSERT_EQ(back[to[k] * pb + i], Byte(from[k], i)) << k;
  }
  for (int32_t s = 0; s < slots; ++s) {
    if (!hit[s]) {
      ASSERT_EQ(back[s * pb], 0x77) << "slot " << s << " was written";
    }
  }
  // The same copy again without staging (pool to pool needs none) into fresh destination bytes.
  CUDA_OK(cudaMemset(dev, 0x77, slots * pb));
  ASSERT_TRUE(CopyPoolPagesAsync(hp, src_idx, dp, dst_idx, n, pb, nullptr, stream_).ok());
  CUDA_OK(cudaStreamSynchronize(stream_));
  CUDA_OK(cudaMemcpy(back.data(), dev, slots * pb, cudaMemcpyDeviceToHost));
  for (int32_t k = 0; k < n; ++k) {
    for (size_t i = 0; i < pb; ++i) ASSERT_EQ(back[to[k] * pb + i], Byte(from[k], i)) << k;
  }
  EXPECT_EQ(CopyPoolPagesAsync(hp, src_idx, dp, nullptr, n, pb, nullptr, stream_).code(),
            absl::StatusCode::kInvalidArgument)
      << "a gather needs staging";
  EXPECT_EQ(CopyPoolPagesAsync(hp, src_idx, dp, dst_idx, 0, pb, staging, stream_).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CopyPoolPagesAsync(hp, nullptr, dp, nullptr, n, pb, staging, stream_).code(),
            absl::StatusCode::kInvalidArgument);
  PagePool narrow{dev, slots, int64_t(pb) - 1};
  EXPECT_EQ(CopyPoolPagesAsync(hp, src_idx, narrow, dst_idx, n, pb, staging, stream_).code(),
            absl::StatusCode::kInvalidArgument);
  cudaFreeHost(host);
  cudaFree(dev);
  cudaFree(staging);
  cudaFree(src_idx);
  cudaFree(dst_idx);
}

TEST(CudaIpcTest, HandlesRoundTripAndDamageIsRejected) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) GTEST_SKIP() << "no GPU";
  void* dev;
  CUDA_OK(cudaMalloc(&dev, 1 << 20));
  auto h = ExportCudaIpc(static_cast<char*>(dev) + 4096, 8192);
  ASSERT_TRUE(h.ok()) << h.status();
  // Opening in the exporting process is refused by design.
  EXPECT_EQ(CudaIpcMapping::Open(*h).status().code(), absl::StatusCode::kFailedPrecondition);
  std::string bad = *h;
  bad[bad.size() / 2] ^= 1;
  EXPECT_EQ(CudaIpcMapping::Open(bad).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CudaIpcMapping::Open("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ExportCudaIpc(static_cast<char*>(dev) + 4096, 1 << 20).status().code(),
            absl::StatusCode::kInvalidArgument);  // runs past the allocation
  std::vector<char> host(64);
  EXPECT_EQ(ExportCudaIpc(host.data(), 64).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ExportCudaIpc(nullptr, 64).status().code(), absl::StatusCode::kInvalidArgument);
  cudaFree(dev);
}

TEST(CudaIpcTest, PeerAccessIsIdempotent) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n < 2) GTEST_SKIP() << "needs two GPUs";
  ASSERT_TRUE(EnablePeerAccess(0, 1).ok());
  ASSERT_TRUE(EnablePeerAccess(0, 1).ok());
  ASSERT_TRUE(EnablePeerAccess(1, 0).ok());
  EXPECT_TRUE(EnablePeerAccess(1, 1).ok());
}

TEST(KvHandoffTest, BadArgumentsAreRejected) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) GTEST_SKIP() << "no GPU";
  void* pool;
  CUDA_OK(cudaMalloc(&pool, 1 << 20));
  KvHandoffShape shape{4, 8, 65536};
  EXPECT_EQ(KvHandoffSender::Create("bad/name", pool, 1 << 20, shape).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KvHandoffSender::Create("t", pool, 1 << 20, {0, 8, 65536}).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto tx = KvHandoffSender::Create("gpu-test-handoff", pool, 1 << 20, shape);
  ASSERT_TRUE(tx.ok()) << tx.status();
  EXPECT_EQ(KvHandoffSender::Create("gpu-test-handoff", pool, 1 << 20, shape).status().code(),
            absl::StatusCode::kAlreadyExists);
  cudaStream_t s;
  CUDA_OK(cudaStreamCreate(&s));
  EXPECT_EQ((*tx)->PublishLayer(4, {0}, s).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*tx)->PublishLayer(0, {}, s).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*tx)->PublishLayer(0, {(1 << 20) - 100}, s).code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<uint64_t> too_many(9, 0);
  EXPECT_EQ((*tx)->PublishLayer(0, too_many, s).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE((*tx)->PublishLayer(0, {0, 65536}, s).ok());
  // Not consumed: the second publication of layer 0 must wait and time out.
  EXPECT_EQ((*tx)->PublishLayer(0, {0}, s, absl::Milliseconds(50)).code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(KvHandoffReceiver::Open("no-such-handoff", absl::Milliseconds(20)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  tx->reset();
  cudaStreamDestroy(s);
  cudaFree(pool);
}

}  // namespace
}  // namespace pagoda
