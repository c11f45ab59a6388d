// Quest page scoring (plain and hierarchical) and top-k selection.
//
// ScoreKernel: grid (candidate tiles, sequence, KV head); each candidate page is scored by
// kDim/8 threads with 16-byte loads of its min/max summaries, for all query heads of the group.
// TopKKernel: one block per (sequence, KV head) selects the top k (BlockTopK: winners in
// candidate order, ties at the threshold to the earliest), then appends the kept pages.
#include <algorithm>

#include "block_topk.cuh"
#include "common.cuh"
#include "pagoda/kernels/cuda.h"
#include "validate.h"

namespace pagoda::kernels::gpu {
namespace {

constexpr int kScoreThreads = 128;
constexpr int kTopKThreads = 512;

template <bool kBf16, int kDim, int kGMax>
__global__ void __launch_bounds__(kScoreThreads)
    ScoreKernel(const __grid_constant__ QuestParams p, int cand_per_block) {
  constexpr int kVec = 8;
  constexpr int kTpt = kDim / kVec;
  constexpr int kGroups = kScoreThreads / kTpt;
  const int b = blockIdx.y;
  const int h = blockIdx.z;
  const PageSummaries& sm = p.summaries;
  const int heads = sm.num_kv_heads;
  const int group = p.num_qo_heads / heads;
  const int c0 = p.cand_indptr[b];
  const int n = p.cand_indptr[b + 1] - c0;
  const int total = p.cand_indptr[p.batch];
  const int j0 = blockIdx.x * cand_per_block;
  const int j1 = min(n, j0 + cand_per_block);
  if (j0 >= j1) return;
  const int tid = threadIdx.x;
  const int tg = tid / kTpt;
  const int lane_in = tid % kTpt;
  const int lane = tid % 32;
  const unsigned mask = kTpt == 32 ? 0xffffffffu : (((1u << kTpt) - 1u) << (lane & ~(kTpt - 1)));
  float q[kGMax][kVec];
#pragma unroll
  for (int g = 0; g < kGMax; ++g) {
    if (g < group) {
      const uint16_t* qp =
          p.q + (static_cast<int64_t>(b) * p.num_qo_heads + h * group + g) * kDim + lane_in * kVec;
      internal::Unpack8<kBf16>(*reinterpret_cast<const uint4*>(qp), q[g]);
    } else {
#pragma unroll
      for (int i = 0; i < kVec; ++i) q[g][i] = 0.f;
    }
  }
  const int sub = p.page_size / sm.sub_pages;
  for (int j = j0 + tg; j < j1; j += kGroups) {
    const int page = p.cand_pages[c0 + j];
    const int valid = min(sm.sub_pages, (sm.count[page] + sub - 1) / sub);
    float best = -INFINITY;
    for (int s = 0; s < valid; ++s) {
      const int64_t at =
          ((static_cast<int64_t>(page) * sm.sub_pages + s) * heads + h) * kDim + lane_in * kVec;
      float mn[kVec], mx[kVec];
      internal::Unpack8<kBf16>(__ldg(reinterpret_cast<const uint4*>(sm.min + at)), mn);
      internal::Unpack8<kBf16>(__ldg(reinterpret_cast<const uint4*>(sm.max + at)), mx);
      float agg = p.reduce == GroupReduce::kMax ? -INFINITY : 0.f;
#pragma unroll
      for (int g = 0; g < kGMax; ++g) {
        float bound = 0.f;
#pragma unroll
        for (int i = 0; i < kVec; ++i) bound += fmaxf(q[g][i] * mx[i], q[g][i] * mn[i]);
#pragma unroll
        for (int off = kTpt / 2; off > 0; off >>= 1) bound += __shfl_xor_sync(mask, bound, off);
        if (g < group) agg = p.reduce == GroupReduce::kMax ? fmaxf(agg, bound) : agg + bound;
      }
      if (isnan(agg)) agg = -INFINITY;
      best = fmaxf(best, agg);
    }
    if (lane_in == 0) p.scores[static_cast<int64_t>(h) * total + c0 + j] = best;
  }
}

__global__ void __launch_bounds__(kTopKThreads) TopKKernel(const __grid_constant__ QuestParams p) {
  __shared__ int s_start;
  const int heads = p.summaries.num_kv_heads;
  const int row = blockIdx.x;
  const int b = row / heads;
  const int h = row - b * heads;
  const int tid = threadIdx.x;
  const int c0 = p.cand_indptr[b];
  const int n = p.cand_indptr[b + 1] - c0;
  const int k = min(p.top_k, n);
  const int keep0 = p.keep_indptr[b];
  const int nkeep = p.keep_indptr[b + 1] - keep0;
  const int total = p.cand_indptr[p.batch];
  if (tid == 0) {
    int start = 0;
    for (int bb = 0; bb < b; ++bb) {
      const int nb = p.cand_indptr[bb + 1] - p.cand_indptr[bb];
      start += heads * (min(p.top_k, nb) + p.keep_indptr[bb + 1] - p.keep_indptr[bb]);
    }
    start += h * (k + nkeep);
    s_start = start;
    p.out_indptr[row] = start;
    if (row == p.batch * heads - 1) p.out_indptr[row + 1] = start + k + nkeep;
    p.out_last_page_len[row] = nkeep > 0 ? p.seq_last_page_len[b] : p.page_size;
  }
  __syncthreads();
  const float* sc = p.scores + static_cast<int64_t>(h) * total + c0;
  int32_t* out = p.out_indices + s_start;
  internal::BlockTopK<kTopKThreads>([&](int i) { return sc[i]; }, n, k,
                                    [&](int rank, int i) { out[rank] = p.cand_pages[c0 + i]; });
  for (int i = tid; i < nkeep; i += kTopKThreads) out[k + i] = p.keep_pages[keep0 + i];
}

template <bool kBf16, int kDim>
void LaunchScore(const QuestParams& p, dim3 grid, int cand_per_block, cudaStream_t stream) {
  const int group = p.num_qo_heads / p.summaries.num_kv_heads;
  if (group <= 1) {
    ScoreKernel<kBf16, kDim, 1><<<grid, kScoreThreads, 0, stream>>>(p, cand_per_block);
  } else if (group <= 2) {
    ScoreKernel<kBf16, kDim, 2><<<grid, kScoreThreads, 0, stream>>>(p, cand_per_block);
  } else if (group <= 4) {
    ScoreKernel<kBf16, kDim, 4><<<grid, kScoreThreads, 0, stream>>>(p, cand_per_block);
  } else {
    ScoreKernel<kBf16, kDim, 8><<<grid, kScoreThreads, 0, stream>>>(p, cand_per_block);
  }
}

constexpr int kCandPerBlock = 64;

}  // namespace

absl::StatusOr<QuestPlan> PlanQuest(const QuestParams& shape, int32_t max_candidates_per_seq) {
  const PageSummaries& sm = shape.summaries;
  if (shape.batch <= 0 || shape.num_qo_heads <= 0 || sm.num_kv_heads <= 0 ||
      shape.num_qo_heads % sm.num_kv_heads != 0 || shape.num_qo_heads / sm.num_kv_heads > 8) {
    return absl::InvalidArgumentError("plan quest: bad head counts (GQA group 1..8)");
  }
  if (sm.head_dim != 64 && sm.head_dim != 128) {
    return absl::InvalidArgumentError("plan quest: head_dim must be 64 or 128");
  }
  if (max_candidates_per_seq < 0 || max_candidates_per_seq >= (1 << 16) * 32) {
    return absl::InvalidArgumentError("plan quest: max_candidates_per_seq out of range");
  }
  QuestPlan plan;
  plan.batch = shape.batch;
  plan.num_qo_heads = shape.num_qo_heads;
  plan.num_kv_heads = sm.num_kv_heads;
  plan.head_dim = sm.head_dim;
  plan.sub_pages = sm.sub_pages;
  plan.max_candidates = max_candidates_per_seq;
  return plan;
}

absl::Status QuestSelect(const QuestPlan& plan, const QuestParams& p, void* workspace,
                         cudaStream_t stream) {
  if (auto s = kernels::internal::ValidateQuestShape(p); !s.ok()) return s;
  const PageSummaries& sm = p.summaries;
  if (plan.batch != p.batch || plan.num_qo_heads != p.num_qo_heads ||
      plan.num_kv_heads != sm.num_kv_heads || plan.head_dim != sm.head_dim ||
      plan.sub_pages != sm.sub_pages) {
    return absl::InvalidArgumentError("gpu quest: params do not match the plan");
  }
  if ((reinterpret_cast<uintptr_t>(sm.min) | reinterpret_cast<uintptr_t>(sm.max) |
       reinterpret_cast<uintptr_t>(p.q)) &
      15u) {
    return absl::InvalidArgumentError("gpu quest: q and summaries must be 16-byte aligned");
  }
  if (plan.max_candidates > 0) {
    const dim3 grid((plan.max_candidates + kCandPerBlock - 1) / kCandPerBlock, p.batch,
                    sm.num_kv_heads);
    const bool bf16 = sm.dtype == DType::kBFloat16;
    if (sm.head_dim == 64) {
      bf16 ? LaunchScore<true, 64>(p, grid, kCandPerBlock, stream)
           : LaunchScore<false, 64>(p, grid, kCandPerBlock, stream);
    } else {
      bf16 ? LaunchScore<true, 128>(p, grid, kCandPerBlock, stream)
           : LaunchScore<false, 128>(p, grid, kCandPerBlock, stream);
    }
    if (auto s = internal::LaunchStatus("quest score launch"); !s.ok()) return s;
  }
  TopKKernel<<<p.batch * sm.num_kv_heads, kTopKThreads, 0, stream>>>(p);
  return internal::LaunchStatus("quest top-k launch");
}

}  // namespace pagoda::kernels::gpu
