// GPU pool-to-pool copy against its CPU reference: device, pinned host and (with two GPUs) peer
// pools, 16-byte and byte paths, poisoned destinations. Skips where no GPU is visible.
#include "pagoda/kernels/pool_copy_cuda.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "pagoda/kernels/pool_copy.h"

namespace pagoda::kernels {
namespace {

#define CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

int Gpus() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

enum class Where { kDevice, kPinnedHost, kPeer };

// Copies n random pages from a random source pool to a poisoned destination pool on device 0 and
// compares every destination byte (listed slots, other slots, gaps) with the reference's result.
void CheckCopy(Where src_where, int64_t page_bytes, int64_t src_stride, int64_t dst_stride, int n,
               uint32_t seed) {
  std::mt19937 rng(seed);
  const int64_t src_slots = 3 * n + 5, dst_slots = 2 * n + 3;
  std::vector<uint8_t> h_src(src_slots * src_stride), h_dst(dst_slots * dst_stride, 0xA5);
  for (auto& b : h_src) b = static_cast<uint8_t>(rng());
  std::vector<int32_t> from(src_slots), to(dst_slots);
  std::iota(from.begin(), from.end(), 0);
  std::iota(to.begin(), to.end(), 0);
  std::shuffle(from.begin(), from.end(), rng);
  std::shuffle(to.begin(), to.end(), rng);
  from.resize(n);
  to.resize(n);

  std::vector<uint8_t> want = h_dst;
  PoolToPoolParams ref{h_src.data(), src_slots,  src_stride,  want.data(), dst_slots,
                       dst_stride,   page_bytes, from.data(), to.data(),   n};
  ASSERT_TRUE(CopyPoolToPoolReference(ref).ok());

  CUDA_OK(cudaSetDevice(src_where == Where::kPeer ? 1 : 0));
  uint8_t* src = nullptr;
  if (src_where == Where::kPinnedHost) {
    CUDA_OK(cudaMallocHost(reinterpret_cast<void**>(&src), h_src.size()));
    std::copy(h_src.begin(), h_src.end(), src);
  } else {
    CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&src), h_src.size()));
    CUDA_OK(cudaMemcpy(src, h_src.data(), h_src.size(), cudaMemcpyHostToDevice));
  }
  CUDA_OK(cudaSetDevice(0));
  if (src_where == Where::kPeer) {
    const cudaError_t e = cudaDeviceEnablePeerAccess(1, 0);
    ASSERT_TRUE(e == cudaSuccess || e == cudaErrorPeerAccessAlreadyEnabled);
    cudaGetLastError();
  }
  uint8_t* dst = nullptr;
  int32_t* slots = nullptr;
  CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&dst), h_dst.size()));
  CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&slots), 2 * n * sizeof(int32_t)));
  CUDA_OK(cudaMemcpy(dst, h_dst.data(), h_dst.size(), cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(slots, from.data(), n * sizeof(int32_t), cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(slots + n, to.data(), n * sizeof(int32_t), cudaMemcpyHostToDevice));
  PoolToPoolParams p{src,        src_slots,  src_stride, dst,       dst_slots,
                     dst_stride, page_bytes, slots,      slots + n, n};
  ASSERT_TRUE(gpu::CopyPoolToPool(p, nullptr).ok());
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<uint8_t> got(h_dst.size());
  CUDA_OK(cudaMemcpy(got.data(), dst, got.size(), cudaMemcpyDeviceToHost));
  size_t wrong = 0;
  for (size_t i = 0; i < got.size(); ++i) wrong += got[i] != want[i];
  EXPECT_EQ(wrong, 0u) << "page_bytes " << page_bytes << " n " << n;
  CUDA_OK(cudaFree(dst));
  CUDA_OK(cudaFree(slots));
  if (src_where == Where::kPinnedHost) {
    CUDA_OK(cudaFreeHost(src));
  } else {
    CUDA_OK(cudaSetDevice(src_where == Where::kPeer ? 1 : 0));
    CUDA_OK(cudaFree(src));
    CUDA_OK(cudaSetDevice(0));
  }
}

TEST(PoolCopyCuda, DevicePoolsMatchReference) {
  if (Gpus() < 1) GTEST_SKIP() << "no GPU";
  CheckCopy(Where::kDevice, 16384, 16384, 16384, 300, 1);        // packed 16 KiB pages
  CheckCopy(Where::kDevice, 65536, 65536 + 256, 65536, 64, 2);   // padded source stride
  CheckCopy(Where::kDevice, 4096 + 16, 8192, 4096 + 32, 33, 3);  // a partial last chunk
  CheckCopy(Where::kDevice, 100, 107, 113, 50, 4);               // byte path (unaligned)
  CheckCopy(Where::kDevice, 16384, 16384, 16384, 1, 5);
}

TEST(PoolCopyCuda, PinnedHostSourceMatchesReference) {
  if (Gpus() < 1) GTEST_SKIP() << "no GPU";
  CheckCopy(Where::kPinnedHost, 16384, 16384, 16384, 200, 6);
  CheckCopy(Where::kPinnedHost, 100, 101, 100, 20, 7);
}

TEST(PoolCopyCuda, PeerSourceMatchesReference) {
  if (Gpus() < 2) GTEST_SKIP() << "needs two GPUs";
  int can = 0;
  ASSERT_EQ(cudaDeviceCanAccessPeer(&can, 0, 1), cudaSuccess);
  if (!can) GTEST_SKIP() << "no peer access between GPU 0 and 1";
  CheckCopy(Where::kPeer, 65536, 65536, 65536, 128, 8);
  CheckCopy(Where::kPeer, 16384 + 48, 16384 + 64, 16384 + 48, 77, 9);
}

}  // namespace
}  // namespace pagoda::kernels
