// The choice of a step from exact masses (MassSelectParams): one block per row; BlockTopK picks
// the row's best candidates in candidate order, and the kept entries go around them.
#include "block_topk.cuh"
#include "common.cuh"
#include "pagoda/kernels/cuda.h"

namespace pagoda::kernels::gpu {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    MassSelectKernel(const __grid_constant__ MassSelectParams p) {
  const int r = blockIdx.x;
  const int first = p.indptr[r], keep = p.keep[r], split = p.split[r];
  const int cand = p.indptr[r + 1] - first - keep;
  const int k = min(p.need[r], cand);
  const int o = p.out_indptr[r];
  auto put = [&](int at, int entry) {
    p.out[o + at] = p.values[first + entry];
    if (p.out_entry != nullptr) p.out_entry[o + at] = entry;
  };
  for (int i = threadIdx.x; i < keep; i += kThreads) put(i < split ? i : k + i, i);
  const float* m = p.mass + first + keep;
  internal::BlockTopK<kThreads>([&](int i) { return m[i]; }, cand, k,
                                [&](int rank, int i) { put(split + rank, keep + i); });
}

}  // namespace

absl::Status MassSelect(const MassSelectParams& p, cudaStream_t stream) {
  if (p.rows < 0) return absl::InvalidArgumentError("gpu mass select: rows < 0");
  if (p.rows == 0) return absl::OkStatus();
  if (p.indptr == nullptr || p.keep == nullptr || p.split == nullptr || p.need == nullptr ||
      p.mass == nullptr || p.values == nullptr || p.out_indptr == nullptr || p.out == nullptr) {
    return absl::InvalidArgumentError("gpu mass select: missing array");
  }
  MassSelectKernel<<<p.rows, kThreads, 0, stream>>>(p);
  return internal::LaunchStatus("mass select launch");
}

}  // namespace pagoda::kernels::gpu
