// One thread block's top-k over a row of float scores: a 4-pass radix select (8 bits a pass)
// finds the k-th largest score's ordered key, then one block scan per tile of kThreads scores
// compacts the winners in index order (ties at the threshold go to the earliest). Quest's
// selection and the choice from exact masses share it.
#ifndef PAGODA_KERNELS_SRC_CUDA_BLOCK_TOPK_CUH_
#define PAGODA_KERNELS_SRC_CUDA_BLOCK_TOPK_CUH_

#include <cub/block/block_scan.cuh>

#include "common.cuh"

namespace pagoda::kernels::gpu::internal {

// Calls emit(rank, i) for each of the min(k, n) indices i of the largest score(i) (k <= 0: none),
// rank being i's place among them in index order. Every thread of the block must call it with
// the same n and k; it synchronizes the block.
template <int kThreads, typename Score, typename Emit>
__device__ void BlockTopK(const Score& score, int n, int k, const Emit& emit) {
  using Scan = cub::BlockScan<uint32_t, kThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ int hist[256];
  __shared__ int s_bin, s_above;
  const int tid = threadIdx.x;
  k = min(k, n);
  if (k <= 0) return;
  uint32_t thresh = 0;
  int take_eq = n;  // how many scores equal to thresh to take (first by index)
  if (k < n) {
    uint32_t prefix = 0, prefix_mask = 0;
    int remaining = k;
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int i = tid; i < 256; i += kThreads) hist[i] = 0;
      __syncthreads();
      for (int i = tid; i < n; i += kThreads) {
        const uint32_t key = OrderedKey(score(i));
        if ((key & prefix_mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1);
      }
      __syncthreads();
      if (tid < 32) {  // find the bin holding the remaining-th largest key, from the top
        int local[8];
        int sum = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          local[i] = hist[255 - (tid * 8 + i)];
          sum += local[i];
        }
        int incl = sum;  // inclusive prefix over lanes (lane 0 = highest bins)
#pragma unroll
        for (int off = 1; off < 32; off <<= 1) {
          const int o = __shfl_up_sync(0xffffffffu, incl, off);
          if (tid >= off) incl += o;
        }
        const int excl = incl - sum;
        if (excl < remaining && remaining <= incl) {
          int acc = excl;
#pragma unroll
          for (int i = 0; i < 8; ++i) {
            if (acc < remaining && remaining <= acc + local[i]) {
              s_bin = 255 - (tid * 8 + i);
              s_above = acc;
            }
            acc += local[i];
          }
        }
      }
      __syncthreads();
      prefix |= static_cast<uint32_t>(s_bin) << shift;
      prefix_mask |= 255u << shift;
      remaining -= s_above;
      __syncthreads();
    }
    thresh = prefix;
    take_eq = remaining;
  }
  uint32_t gt_base = 0, eq_base = 0;
  for (int t0 = 0; t0 < n; t0 += kThreads) {
    const int i = t0 + tid;
    uint32_t gt = 0, eq = 0;
    if (i < n) {
      if (k == n) {
        gt = 1;
      } else {
        const uint32_t key = OrderedKey(score(i));
        gt = key > thresh;
        eq = key == thresh;
      }
    }
    uint32_t packed = (gt << 16) | eq, rank, agg;
    Scan(scan_tmp).ExclusiveSum(packed, rank, agg);
    const uint32_t gt_rank = gt_base + (rank >> 16);
    const uint32_t eq_rank = eq_base + (rank & 0xffffu);
    if (gt || (eq && eq_rank < static_cast<uint32_t>(take_eq))) {
      emit(static_cast<int>(gt_rank + min(eq_rank, static_cast<uint32_t>(take_eq))), i);
    }
    gt_base += agg >> 16;
    eq_base += agg & 0xffffu;
    __syncthreads();  // scan_tmp is reused
  }
}

}  // namespace pagoda::kernels::gpu::internal

#endif  // PAGODA_KERNELS_SRC_CUDA_BLOCK_TOPK_CUH_
