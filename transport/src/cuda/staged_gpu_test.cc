// GPU test of the host-staged path: pages of a remote host registration (UCX loopback) read into
// scattered GPU pages and written back, byte for byte. Needs a GPU and UCX; run on the GPU machine
// by bench/gpu/run.sh with UCX's libraries carried (see bench/transport/carry_staged_test.sh).
#include "pagoda/transport/staged_gpu.h"

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "pagoda/transport/transport.h"
#include "transport/src/test_pattern.h"

namespace pagoda {
namespace {

using ::pagoda::testing::FillPattern;
using ::pagoda::testing::FirstMismatch;

class StagedGpuTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) GTEST_SKIP() << "no GPU";
  }
};

INSTANTIATE_TEST_SUITE_P(Tls, StagedGpuTest, ::testing::Values("tcp", "tcp,sm,self"),
                         [](const auto& info) { return info.param == "tcp" ? "tcp" : "sm"; });

TEST_P(StagedGpuTest, RemotePagesReachScatteredGpuPagesAndComeBackExact) {
  const size_t page = 64 << 10, slots = 96, n = 70;
  TransportOptions opts;
  opts.ucx_tls = GetParam();
  opts.detect_peer_failure = GetParam() == "tcp";
  auto server = Transport::Create(opts);
  auto client = Transport::Create(opts);
  ASSERT_TRUE(server.ok() && client.ok());
  std::vector<uint8_t> region(slots * page);
  FillPattern(region.data(), region.size(), 21, 0);
  auto mem = (*server)->Register(region.data(), region.size(), MemoryKind::kHost);
  ASSERT_TRUE(mem.ok());
  auto ep = (*client)->Connect((*server)->address());
  ASSERT_TRUE(ep.ok()) << ep.status();
  auto remote = (*ep)->ImportRemoteKey(*(*mem)->PackRemoteKey());
  ASSERT_TRUE(remote.ok());

  uint8_t* gpu;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&gpu), slots * page), cudaSuccess);
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  std::vector<size_t> from(slots), to(slots);
  std::iota(from.begin(), from.end(), 0);
  std::iota(to.begin(), to.end(), 0);
  std::mt19937 rng(3);
  std::shuffle(from.begin(), from.end(), rng);
  std::shuffle(to.begin(), to.end(), rng);
  std::vector<uint64_t> offsets(n);
  std::vector<void*> pages(n);
  for (size_t i = 0; i < n; ++i) {
    offsets[i] = from[i] * page;
    pages[i] = gpu + to[i] * page;
  }
  // Small bounce buffers so that the batch spans many chunks and the pipeline wraps around.
  auto copier = StagedGpuCopier::Create(client->get(), {5 * page + 100, 2});
  ASSERT_TRUE(copier.ok()) << copier.status();
  ASSERT_TRUE((*copier)->Read(**ep, **remote, offsets, pages, page, stream).ok());
  std::vector<uint8_t> back(page);
  for (size_t i = 0; i < n; ++i) {
    ASSERT_EQ(cudaMemcpy(back.data(), pages[i], page, cudaMemcpyDeviceToHost), cudaSuccess);
    ASSERT_EQ(FirstMismatch(back.data(), page, 21, offsets[i]), page) << "page " << i;
  }
  // Write them back to different remote slots (reversed order), then check the region.
  std::vector<uint64_t> wr(n);
  std::vector<const void*> cpages(n);
  for (size_t i = 0; i < n; ++i) {
    wr[i] = from[n - 1 - i] * page;
    cpages[i] = pages[i];
  }
  std::vector<uint8_t> before = region;
  ASSERT_TRUE((*copier)->Write(**ep, **remote, wr, cpages, page, stream).ok());
  for (size_t i = 0; i < n; ++i) {
    ASSERT_EQ(std::memcmp(region.data() + wr[i], before.data() + offsets[i], page), 0) << i;
  }
  // Bad input changes nothing.
  EXPECT_EQ((*copier)->Read(**ep, **remote, offsets, {}, page, stream).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*copier)->Read(**ep, **remote, offsets, pages, 6 * page, stream).code(),
            absl::StatusCode::kInvalidArgument);
  cudaStreamDestroy(stream);
  cudaFree(gpu);
}

}  // namespace
}  // namespace pagoda
