// GPU verified head-page gather against its CPU reference: a pinned host source read over PCIe,
// a poisoned pool, one corrupted source head-page. Skips where no GPU is visible.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "pagoda/kernels/cuda.h"
#include "pagoda/kernels/head_checksum.h"
#include "pagoda/kernels/reference.h"

namespace pagoda::kernels {
namespace {

#define CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

bool HaveGpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

void CheckGather(int64_t half, int heads, int slots, int n, uint32_t seed) {
  std::mt19937 rng(seed);
  const int64_t pages = 2 * n + 3, page_bytes = 2 * heads * half;
  std::vector<uint8_t> h_src(pages * page_bytes);
  for (auto& b : h_src) b = static_cast<uint8_t>(rng());
  std::vector<int64_t> k(n), v(n);
  std::vector<int32_t> head(n), slot(n), dst(heads * slots);
  std::vector<uint64_t> sums(n);
  std::iota(dst.begin(), dst.end(), 0);
  std::shuffle(dst.begin(), dst.end(), rng);
  for (int i = 0; i < n; ++i) {
    const int64_t page = rng() % pages;
    const int h = dst[i] / slots;
    k[i] = page * page_bytes + h * half;
    v[i] = page * page_bytes + (heads + h) * half;
    head[i] = h;
    slot[i] = dst[i] % slots;
    sums[i] = HeadPageChecksum(&h_src[k[i]], &h_src[v[i]], half);
  }
  if (n > 1) sums[n / 2] ^= 1;  // a stale expectation: must be flagged

  std::vector<uint8_t> want(heads * slots * 2 * half, 0xA5), want_bad(n, 9);
  HeadGatherParams ref{h_src.data(),
                       static_cast<int64_t>(h_src.size()),
                       want.data(),
                       heads,
                       slots,
                       half,
                       n,
                       k.data(),
                       v.data(),
                       head.data(),
                       slot.data(),
                       sums.data(),
                       want_bad.data()};
  ASSERT_TRUE(GatherHeadPagesReference(ref).ok());

  uint8_t *src = nullptr, *pool = nullptr, *bad = nullptr;
  int64_t* offs = nullptr;
  int32_t* ids = nullptr;
  uint64_t* exp = nullptr;
  CUDA_OK(cudaMallocHost(reinterpret_cast<void**>(&src), h_src.size()));
  std::copy(h_src.begin(), h_src.end(), src);
  CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&pool), want.size()));
  CUDA_OK(cudaMemset(pool, 0xA5, want.size()));
  CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&offs), 2 * n * sizeof(int64_t)));
  CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&ids), 2 * n * sizeof(int32_t)));
  CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&exp), n * sizeof(uint64_t)));
  CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&bad), n));
  CUDA_OK(cudaMemcpy(offs, k.data(), n * 8, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(offs + n, v.data(), n * 8, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(ids, head.data(), n * 4, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(ids + n, slot.data(), n * 4, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(exp, sums.data(), n * 8, cudaMemcpyHostToDevice));
  HeadGatherParams p{src,      static_cast<int64_t>(h_src.size()),
                     pool,     heads,
                     slots,    half,
                     n,        offs,
                     offs + n, ids,
                     ids + n,  exp,
                     bad};
  ASSERT_TRUE(gpu::GatherHeadPages(p, nullptr).ok());
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<uint8_t> got(want.size()), got_bad(n);
  CUDA_OK(cudaMemcpy(got.data(), pool, got.size(), cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(got_bad.data(), bad, n, cudaMemcpyDeviceToHost));
  EXPECT_EQ(got, want) << "half " << half << " n " << n;
  EXPECT_EQ(got_bad, want_bad);
  CUDA_OK(cudaFreeHost(src));
  for (void* x : {static_cast<void*>(pool), static_cast<void*>(offs), static_cast<void*>(ids),
                  static_cast<void*>(exp), static_cast<void*>(bad)}) {
    CUDA_OK(cudaFree(x));
  }
}

TEST(GatherHeadPagesGpu, MatchesReference) {
  if (!HaveGpu()) GTEST_SKIP() << "no GPU";
  CheckGather(16 * 128 * 2, 8, 37, 97, 1);  // Llama-3-8B head-page (16 tokens x 128 dims)
  CheckGather(16 * 64 * 2, 4, 11, 17, 2);
  CheckGather(1 * 64 * 2, 2, 5, 1, 3);  // one-token pages, one copy
  CheckGather(64 * 128 * 2, 8, 64, 200, 4);
}

// The prefill page assembly on the GPU against its reference: device token rows (padded token
// stride) into a pinned host destination at shuffled offsets, one checksum-only page; the bytes
// and the head checksums must be identical.
void CheckAssembly(int pages, int page_size, int heads, int dim, uint32_t seed) {
  std::mt19937 rng(seed);
  const int64_t stride = int64_t{heads} * dim + 8, rows = int64_t{pages} * page_size;
  const int64_t page_bytes = 4 * int64_t{heads} * page_size * dim;
  std::vector<uint16_t> k(rows * stride), v(rows * stride);
  for (auto& x : k) x = static_cast<uint16_t>(rng());
  for (auto& x : v) x = static_cast<uint16_t>(rng());
  std::vector<int64_t> slot(pages + 2);
  std::iota(slot.begin(), slot.end(), 0);
  std::shuffle(slot.begin(), slot.end(), rng);
  std::vector<int64_t> offsets(pages);
  for (int i = 0; i < pages; ++i) offsets[i] = slot[i] * page_bytes;
  offsets[pages / 2] = -1;  // held by the store already: checksums only
  const int64_t dst_bytes = (pages + 2) * page_bytes;
  std::vector<uint8_t> want(dst_bytes, 0x5A);
  std::vector<uint64_t> want_sums(pages * heads);
  PageAssemblyParams ref;
  ref.dtype = DType::kBFloat16;
  ref.num_pages = pages;
  ref.page_size = page_size;
  ref.num_kv_heads = heads;
  ref.head_dim = dim;
  ref.k = k.data();
  ref.v = v.data();
  ref.k_stride_token = ref.v_stride_token = stride;
  ref.k_stride_head = ref.v_stride_head = dim;
  ref.dst = want.data();
  ref.dst_bytes = dst_bytes;
  ref.dst_offset = offsets.data();
  ref.head_sums = want_sums.data();
  ASSERT_TRUE(AssemblePagesReference(ref).ok());

  uint16_t* dk = nullptr;
  uint16_t* dv = nullptr;
  uint8_t* dst = nullptr;
  int64_t* doff = nullptr;
  uint64_t* dsums = nullptr;
  CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&dk), k.size() * 2));
  CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&dv), v.size() * 2));
  CUDA_OK(cudaMemcpy(dk, k.data(), k.size() * 2, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(dv, v.data(), v.size() * 2, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMallocHost(reinterpret_cast<void**>(&dst), dst_bytes));
  std::fill(dst, dst + dst_bytes, 0x5A);
  CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&doff), pages * 8));
  CUDA_OK(cudaMemcpy(doff, offsets.data(), pages * 8, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&dsums), pages * heads * 8));
  PageAssemblyParams p = ref;
  p.k = dk;
  p.v = dv;
  p.dst = dst;
  p.dst_offset = doff;
  p.head_sums = dsums;
  ASSERT_TRUE(gpu::AssemblePages(p, nullptr).ok());
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<uint64_t> sums(pages * heads);
  CUDA_OK(cudaMemcpy(sums.data(), dsums, sums.size() * 8, cudaMemcpyDeviceToHost));
  EXPECT_EQ(sums, want_sums);
  EXPECT_TRUE(std::equal(want.begin(), want.end(), dst)) << "pages " << pages;
  CUDA_OK(cudaFreeHost(dst));
  for (void* x : {static_cast<void*>(dk), static_cast<void*>(dv), static_cast<void*>(doff),
                  static_cast<void*>(dsums)}) {
    CUDA_OK(cudaFree(x));
  }
}

TEST(AssemblePagesGpu, MatchesReference) {
  if (!HaveGpu()) GTEST_SKIP() << "no GPU";
  CheckAssembly(37, 16, 8, 128, 5);  // Llama-3-8B pages
  CheckAssembly(5, 16, 4, 64, 6);
  CheckAssembly(3, 1, 2, 64, 7);  // one-token pages
}

}  // namespace
}  // namespace pagoda::kernels
