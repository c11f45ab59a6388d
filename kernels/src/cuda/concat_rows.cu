// Per-row concatenation of two entry lists (ConcatRowsParams): a block per row.
#include "common.cuh"
#include "pagoda/kernels/cuda.h"

namespace pagoda::kernels::gpu {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    ConcatRowsKernel(const __grid_constant__ ConcatRowsParams p) {
  const int r = blockIdx.x;
  const int a0 = p.a_indptr[r], na = p.a_indptr[r + 1] - a0;
  const int o = p.out_indptr[r], n = p.out_indptr[r + 1] - o;
  for (int i = threadIdx.x; i < n; i += kThreads) {
    if (i < na) {
      p.out_slots[o + i] = p.a_slots[a0 + i];
      p.out_len[o + i] = p.a_len[a0 + i];
    } else {
      p.out_slots[o + i] = p.b_src[r][i - na];
      p.out_len[o + i] = p.fill_len;
    }
  }
}

}  // namespace

absl::Status ConcatRows(const ConcatRowsParams& p, cudaStream_t stream) {
  if (p.rows < 0) return absl::InvalidArgumentError("gpu concat rows: rows < 0");
  if (p.rows == 0) return absl::OkStatus();
  if (p.a_indptr == nullptr || p.out_indptr == nullptr || p.b_src == nullptr ||
      p.out_slots == nullptr || p.out_len == nullptr) {
    return absl::InvalidArgumentError("gpu concat rows: missing array");
  }
  ConcatRowsKernel<<<p.rows, kThreads, 0, stream>>>(p);
  return internal::LaunchStatus("concat rows launch");
}

}  // namespace pagoda::kernels::gpu
