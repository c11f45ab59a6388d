// k-means over a sequence's keys per KV head.
//
// AssignKernel: one thread per token (its key in registers), centroids streamed through shared
// memory in tiles of kTile; distances are sum_d (x_d - c_d)^2 in float, ties to the lowest
// cluster. Update: float atomics accumulate per-cluster sums and counts in the workspace, then a
// finalize kernel divides (clusters with no keys keep their centroid).
#include "common.cuh"
#include "pagoda/kernels/cuda.h"
#include "validate.h"

namespace pagoda::kernels::gpu {
namespace {

constexpr int kAssignThreads = 128;
constexpr int kTile = 32;

template <bool kBf16, int kDim>
__device__ __forceinline__ const uint16_t* KeyRow(const KMeansParams& p, int h, int t) {
  const PagedKV& kv = p.kv;
  return kv.k + p.pages[t / kv.page_size] * kv.stride_page + h * kv.stride_head +
         (t % kv.page_size) * kv.stride_token;
}

template <bool kBf16, int kDim>
__global__ void __launch_bounds__(kAssignThreads)
    AssignKernel(const __grid_constant__ KMeansParams p) {
  __shared__ float4 tile[kTile][kDim / 4];
  const int h = blockIdx.y;
  const int t = blockIdx.x * kAssignThreads + threadIdx.x;
  const bool active = t < p.num_tokens;
  float x[kDim];
  if (active) {
    const uint16_t* row = KeyRow<kBf16, kDim>(p, h, t);
#pragma unroll
    for (int v = 0; v < kDim / 8; ++v) {
      float f[8];
      internal::Unpack8<kBf16>(*reinterpret_cast<const uint4*>(row + v * 8), f);
#pragma unroll
      for (int i = 0; i < 8; ++i) x[v * 8 + i] = f[i];
    }
  } else {
#pragma unroll
    for (int d = 0; d < kDim; ++d) x[d] = 0.f;
  }
  const float4* cent = reinterpret_cast<const float4*>(p.centroids + static_cast<int64_t>(h) *
                                                                         p.num_clusters * kDim);
  float best = INFINITY;
  int arg = 0;
  for (int c0 = 0; c0 < p.num_clusters; c0 += kTile) {
    const int nc = min(kTile, p.num_clusters - c0);
    __syncthreads();
    for (int i = threadIdx.x; i < nc * (kDim / 4); i += kAssignThreads) {
      tile[i / (kDim / 4)][i % (kDim / 4)] = cent[static_cast<int64_t>(c0) * (kDim / 4) + i];
    }
    __syncthreads();
    for (int c = 0; c < nc; ++c) {
      float dist = 0.f;
#pragma unroll
      for (int v = 0; v < kDim / 4; ++v) {
        const float4 cc = tile[c][v];
        float e = x[4 * v] - cc.x;
        dist = fmaf(e, e, dist);
        e = x[4 * v + 1] - cc.y;
        dist = fmaf(e, e, dist);
        e = x[4 * v + 2] - cc.z;
        dist = fmaf(e, e, dist);
        e = x[4 * v + 3] - cc.w;
        dist = fmaf(e, e, dist);
      }
      if (dist < best) {
        best = dist;
        arg = c0 + c;
      }
    }
  }
  if (active) p.assignment[static_cast<int64_t>(h) * p.num_tokens + t] = arg;
}

// One thread per (token, 8 dimensions).
template <bool kBf16, int kDim>
__global__ void AccumulateKernel(const __grid_constant__ KMeansParams p, float* sums, int* counts) {
  constexpr int kTpt = kDim / 8;
  const int h = blockIdx.y;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int t = static_cast<int>(idx / kTpt);
  const int part = static_cast<int>(idx % kTpt);
  if (t >= p.num_tokens) return;
  const int c = p.assignment[static_cast<int64_t>(h) * p.num_tokens + t];
  float f[8];
  internal::Unpack8<kBf16>(*reinterpret_cast<const uint4*>(KeyRow<kBf16, kDim>(p, h, t) + part * 8),
                           f);
  float* s = sums + (static_cast<int64_t>(h) * p.num_clusters + c) * kDim + part * 8;
#pragma unroll
  for (int i = 0; i < 8; ++i) atomicAdd(s + i, f[i]);
  if (part == 0) atomicAdd(counts + static_cast<int64_t>(h) * p.num_clusters + c, 1);
}

__global__ void FinalizeKernel(const __grid_constant__ KMeansParams p, const float* sums,
                               const int* counts) {
  const int dim = p.kv.head_dim;
  const int64_t total = static_cast<int64_t>(p.kv.num_kv_heads) * p.num_clusters * dim;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t hc = i / dim;
    const int n = counts[hc];
    if (n > 0) p.centroids[i] = sums[i] / static_cast<float>(n);
    if (i % dim == 0) p.cluster_size[hc] = n;
  }
}

absl::Status CheckGpuShape(const KMeansParams& p) {
  if (auto s = kernels::internal::ValidateKMeansShape(p); !s.ok()) return s;
  if (p.kv.head_dim != 64 && p.kv.head_dim != 128) {
    return absl::InvalidArgumentError("gpu kmeans: head_dim must be 64 or 128");
  }
  if ((reinterpret_cast<uintptr_t>(p.kv.k) & 15u) || p.kv.stride_page % 8 || p.kv.stride_head % 8 ||
      p.kv.stride_token % 8 || (reinterpret_cast<uintptr_t>(p.centroids) & 15u)) {
    return absl::InvalidArgumentError("gpu kmeans: keys and centroids must be 16-byte aligned");
  }
  return absl::OkStatus();
}

size_t SumsBytes(const KMeansParams& p) {
  return (static_cast<size_t>(p.kv.num_kv_heads) * p.num_clusters * p.kv.head_dim * 4 + 255) / 256 *
         256;
}

}  // namespace

size_t KMeansWorkspaceBytes(const KMeansParams& p) {
  return SumsBytes(p) + static_cast<size_t>(p.kv.num_kv_heads) * p.num_clusters * 4;
}

absl::Status KMeansAssign(const KMeansParams& p, cudaStream_t stream) {
  if (auto s = CheckGpuShape(p); !s.ok()) return s;
  const dim3 grid((p.num_tokens + kAssignThreads - 1) / kAssignThreads, p.kv.num_kv_heads);
  const bool bf16 = p.kv.dtype == DType::kBFloat16;
  if (p.kv.head_dim == 64) {
    bf16 ? AssignKernel<true, 64><<<grid, kAssignThreads, 0, stream>>>(p)
         : AssignKernel<false, 64><<<grid, kAssignThreads, 0, stream>>>(p);
  } else {
    bf16 ? AssignKernel<true, 128><<<grid, kAssignThreads, 0, stream>>>(p)
         : AssignKernel<false, 128><<<grid, kAssignThreads, 0, stream>>>(p);
  }
  return internal::LaunchStatus("kmeans assign launch");
}

absl::Status KMeansUpdate(const KMeansParams& p, void* workspace, cudaStream_t stream) {
  if (auto s = CheckGpuShape(p); !s.ok()) return s;
  if (workspace == nullptr) return absl::InvalidArgumentError("gpu kmeans: null workspace");
  float* sums = static_cast<float*>(workspace);
  int* counts = reinterpret_cast<int*>(static_cast<char*>(workspace) + SumsBytes(p));
  if (auto s = internal::CudaStatus(cudaMemsetAsync(workspace, 0, KMeansWorkspaceBytes(p), stream),
                                    "kmeans memset");
      !s.ok()) {
    return s;
  }
  const int tpt = p.kv.head_dim / 8;
  const dim3 grid((static_cast<int64_t>(p.num_tokens) * tpt + 255) / 256, p.kv.num_kv_heads);
  const bool bf16 = p.kv.dtype == DType::kBFloat16;
  if (p.kv.head_dim == 64) {
    bf16 ? AccumulateKernel<true, 64><<<grid, 256, 0, stream>>>(p, sums, counts)
         : AccumulateKernel<false, 64><<<grid, 256, 0, stream>>>(p, sums, counts);
  } else {
    bf16 ? AccumulateKernel<true, 128><<<grid, 256, 0, stream>>>(p, sums, counts)
         : AccumulateKernel<false, 128><<<grid, 256, 0, stream>>>(p, sums, counts);
  }
  if (auto s = internal::LaunchStatus("kmeans accumulate launch"); !s.ok()) return s;
  FinalizeKernel<<<264, 256, 0, stream>>>(p, sums, counts);
  return internal::LaunchStatus("kmeans finalize launch");
}

}  // namespace pagoda::kernels::gpu
