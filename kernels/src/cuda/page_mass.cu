// Exact page masses (PageMassParams, rows optionally ending in stored lists) and, optionally,
// the step's choice from them (MassSelectParams), in two kernels. Pass 1 spreads each (sequence, KV
// head) row's entries over several blocks, a warp per entry: a lane holds head_dim / 32 dimensions
// of every query head of the group, so a token's dot per query head is a warp reduction (four
// tokens' reductions interleaved), folded into the entry's running max and exp-sum (online softmax)
// in the workspace. Pass 2, a block per row, reduces the row's per-head maximum and normalizer,
// writes each entry's mass and, with a choice asked for, picks the row's best candidates
// (BlockTopK) and places the kept entries around them. The choice was a third kernel before (7.5 us
// traced at B=1 on an H100, with its own launch gap). Measured and not kept (bench/RESULTS.md, runs
// 22-25): pass 2 folded into pass 1's last block per row (one block's latency-bound tail after the
// grid: slower), a one-pass online merge of the per-head pairs (17.8 us against this pass's 14.3)
// and a warp-aggregated BlockTopK histogram (15.6).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "block_topk.cuh"
#include "common.cuh"
#include "pagoda/kernels/cuda.h"
#include "validate.h"

namespace pagoda::kernels::gpu {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxGroup = 8;
constexpr int kMassCache = 2048;  // a row's masses kept in shared memory for the choice

// The transposed butterfly from offset O down to 1 over x[0, 2 * O) (see its use below). Levels
// are template arguments so that every index is a constant: with `upper ? x[i + o] : x[i]` in a
// loop over o, nvcc keeps x in local memory (188 local loads / stores in the kernel at a group of
// 4; the kernel ran at ~0.7 TB/s on an H100, run 19), and at a group of 8 it did not unroll the
// levels at all.
template <int O, int N>
__device__ __forceinline__ void Butterfly(float (&x)[N], int lane) {
  if constexpr (O >= 1) {
    const uint32_t hi = (lane & O) != 0 ? 0xffffffffu : 0u;
#pragma unroll
    for (int i = 0; i < O; ++i) {
      const uint32_t a = __float_as_uint(x[i]), c = __float_as_uint(x[i + O]);
      const float keep = __uint_as_float((c & hi) | (a & ~hi));
      const float send = __uint_as_float((a & hi) | (c & ~hi));
      x[i] = keep + __shfl_xor_sync(0xffffffffu, send, O);
    }
    Butterfly<O / 2>(x, lane);
  }
}

// Where row r's entries are: the listed ones, then (with p.tails) the row's stored list. Reading
// a stored list in place saves the copy into one array that a kernel of its own made before
// (3.7 us and a launch per louiskv layer-step at B=1 on an H100, bench/RESULTS.md).
struct RowEntries {
  const int32_t* ids;  // the listed entries' page ids and lengths
  const int32_t* len;
  const int32_t* tail;  // the rest's page ids (tail_len tokens each)
  int listed;
  int tail_len;
  __device__ __forceinline__ int Id(int e) const { return e < listed ? ids[e] : tail[e - listed]; }
  __device__ __forceinline__ int Len(int e) const { return e < listed ? len[e] : tail_len; }
};

__device__ __forceinline__ RowEntries EntriesOf(const PageMassParams& p, int r, int first,
                                                int count) {
  if (p.tails == nullptr) return {p.indices + first, p.page_len + first, nullptr, count, 0};
  const int at = p.listed[r];
  return {p.indices + at, p.page_len + at, p.tails[r], p.listed[r + 1] - at, p.tail_len};
}

// One warp's share of a row: the entries e0, e0 + gridDim.y * kWarps, ... of row (b, h).
template <int kDim, bool kBf16, int kG>
__device__ __forceinline__ void Fold(const PageMassParams& p, float scale, float* ws, int b, int h,
                                     int group, int first, int count, const RowEntries& row,
                                     int lane, int e0) {
  constexpr int kPer = kDim / 32;   // dimensions per lane: 2 or 4 halves
  constexpr int kWords = kPer / 2;  // 32-bit words per lane and token
  constexpr int kChunk = 16;
  constexpr int kTok = 4;
  float q[kG][kPer];
#pragma unroll
  for (int g = 0; g < kG; ++g) {
    const uint16_t* qg = p.q + (int64_t{b} * p.num_qo_heads + h * group + g) * kDim + lane * kPer;
#pragma unroll
    for (int i = 0; i < kPer; ++i)
      q[g][i] = g < group ? internal::Unpack1<kBf16>(qg[i]) * scale : 0.f;
  }
  // The fold: a lane ends each group of kTok tokens holding one reduced dot, that of value
  // (token u, head g) with u * kG + g = lane % kV, and keeps a running (max, exp-sum) for its
  // head over its tokens; the kTok lanes of a head merge theirs at the entry's end.
  constexpr int kV = kTok * kG;  // values per token group: 4, 8, 16 or 32
  const int my_u = (lane % kV) / kG;
  for (int e = e0; e < count; e += gridDim.y * kWarps) {
    const int n = row.Len(e);
    const uint16_t* page =
        p.kv.k + row.Id(e) * p.kv.stride_page + h * p.kv.stride_head + lane * kPer;
    float m = -INFINITY, s = 0.f;
    for (int t0 = 0; t0 < n; t0 += kChunk) {
      uint32_t raw[kChunk][kWords];
#pragma unroll
      for (int u = 0; u < kChunk; ++u) {
        const int t = min(t0 + u, n - 1);  // past the page's end: a repeat, skipped below
        const uint16_t* src = page + t * p.kv.stride_token;
        if constexpr (kWords == 2) {
          const uint2 w = *reinterpret_cast<const uint2*>(src);
          raw[u][0] = w.x;
          raw[u][1] = w.y;
        } else {
          raw[u][0] = *reinterpret_cast<const uint32_t*>(src);
        }
      }
#pragma unroll
      for (int u0 = 0; u0 < kChunk; u0 += kTok) {
        if (t0 + u0 >= n) continue;  // (not break: the loop stays unrolled)
        float x[kV];                 // lane-partial dots, value u * kG + g
#pragma unroll
        for (int v = 0; v < kTok; ++v) {
          float k[kPer];
#pragma unroll
          for (int w = 0; w < kWords; ++w) {
            k[2 * w] = internal::Unpack1<kBf16>(static_cast<uint16_t>(raw[u0 + v][w] & 0xffffu));
            k[2 * w + 1] = internal::Unpack1<kBf16>(static_cast<uint16_t>(raw[u0 + v][w] >> 16));
          }
#pragma unroll
          for (int g = 0; g < kG; ++g) {
            float d = 0.f;
#pragma unroll
            for (int i = 0; i < kPer; ++i) d = fmaf(q[g][i], k[i], d);
            x[v * kG + g] = d;
          }
        }
        // Transposed butterfly: at offset o each lane keeps half of its 2o values (the upper
        // half where lane & o) and adds its partner's copy of them, so after offsets kV/2 .. 1 it
        // holds value lane % kV summed over 2 * ... * kV/2 lanes; offsets kV .. 16 finish the sum.
        Butterfly<kV / 2>(x, lane);
        float dot = x[0];
#pragma unroll
        for (int o = kV; o < 32; o *= 2) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        if (t0 + u0 + my_u < n) {
          if (dot > m) {
            s = s * __expf(m - dot) + 1.f;
            m = dot;
          } else {
            s += __expf(dot - m);
          }
        }
      }
    }
    // Merge the kTok lanes of each head (lanes my_g + kG * u): every lane gets its head's total.
#pragma unroll
    for (int o = kG; o < kV; o *= 2) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
      const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
      const float mx = fmaxf(m, m2);
      s = (m == -INFINITY ? 0.f : s * __expf(m - mx)) +
          (m2 == -INFINITY ? 0.f : s2 * __expf(m2 - mx));
      m = mx;
    }
    if (lane < kG && lane < group) {
      float* w = ws + (int64_t{first + e} * group + lane) * 2;
      w[0] = m;
      w[1] = s;
    }
  }
}

// Row r's pass 2: the row's per-head maximum, then normalizer, over its entries (a block
// reduction each), each entry's mass (global, and the first kMassCache in shared memory), then
// with sel.rows > 0 the row's choice (MassSelectParams' placement: kept [0, split), the best
// candidates, kept [split, keep)); each output is sel.values[entry], or without values the
// entry's page id.
__device__ void Finish(const PageMassParams& p, const float* ws, const MassSelectParams& sel, int r,
                       int group, int first, int count, const RowEntries& row) {
  __shared__ float scratch[kWarps];
  __shared__ float row_max[kMaxGroup], row_z[kMaxGroup];
  __shared__ float cache[kMassCache];
  const int tid = threadIdx.x;
  auto reduce = [&](float v, bool is_max) {
    for (int off = 16; off > 0; off >>= 1) {
      const float o = __shfl_xor_sync(0xffffffffu, v, off);
      v = is_max ? fmaxf(v, o) : v + o;
    }
    if ((tid & 31) == 0) scratch[tid >> 5] = v;
    __syncthreads();
    float r = scratch[0];
    for (int w = 1; w < kWarps; ++w) r = is_max ? fmaxf(r, scratch[w]) : r + scratch[w];
    __syncthreads();
    return r;
  };
  for (int g = 0; g < group; ++g) {
    float mx = -INFINITY;
    for (int e = tid; e < count; e += kThreads) {
      mx = fmaxf(mx, ws[(int64_t{first + e} * group + g) * 2]);
    }
    mx = reduce(mx, true);
    float z = 0.f;
    for (int e = tid; e < count; e += kThreads) {
      const float* w = ws + (int64_t{first + e} * group + g) * 2;
      z += w[1] * __expf(w[0] - mx);
    }
    z = reduce(z, false);
    if (tid == 0) row_max[g] = mx, row_z[g] = z;
  }
  __syncthreads();
  for (int e = tid; e < count; e += kThreads) {
    float mass = 0.f;
    for (int g = 0; g < group; ++g) {
      const float* w = ws + (int64_t{first + e} * group + g) * 2;
      const float prob = w[1] * __expf(w[0] - row_max[g]) / row_z[g];
      mass = p.reduce == GroupReduce::kMax ? fmaxf(mass, prob) : mass + prob;
    }
    p.mass[first + e] = mass;
    if (e < kMassCache) cache[e] = mass;
  }
  if (sel.rows == 0) return;
  __syncthreads();  // the masses (shared and global) are visible to the whole block
  const int keep = sel.keep[r], split = sel.split[r];
  const int cand = count - keep;
  const int k = min(sel.need[r], cand);
  const int o = sel.out_indptr[r];
  auto put = [&](int at, int entry) {
    sel.out[o + at] = sel.values != nullptr ? sel.values[first + entry] : row.Id(entry);
    if (sel.out_entry != nullptr) sel.out_entry[o + at] = entry;
  };
  for (int i = tid; i < keep; i += kThreads) put(i < split ? i : k + i, i);
  const float* mass = p.mass + first;
  internal::BlockTopK<kThreads>(
      [&](int i) { return keep + i < kMassCache ? cache[keep + i] : mass[keep + i]; }, cand, k,
      [&](int rank, int i) { put(split + rank, keep + i); });
}

// ws holds (max, exp-sum) per (entry, query head of the group): ws[(e * group + g) * 2 + 0/1].
// Pass 1: blocks (row, split); warp w of block y takes entries y * kWarps + w, then every
// gridDim.y * kWarps-th one. A warp loads kChunk tokens of its page at once (each lane its
// kPer dimensions of each: the loads in flight are what the HBM needs), then folds them kTok at
// a time (Fold). kG >= the group bounds the per-head arrays.
template <int kDim, bool kBf16, int kG>
__global__ void __launch_bounds__(kThreads, 1)
    PageMassPartialKernel(const __grid_constant__ PageMassParams p, float scale, float* ws) {
  const int H = p.kv.num_kv_heads;
  const int r = blockIdx.x, b = r / H, h = r % H;
  const int group = p.num_qo_heads / H;
  const int first = p.indptr[r], count = p.indptr[r + 1] - first;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int e0 = blockIdx.y * kWarps + warp;
  if (e0 >= count) return;
  Fold<kDim, kBf16, kG>(p, scale, ws, b, h, group, first, count, EntriesOf(p, r, first, count),
                        lane, e0);
}

// Pass 2: a block per row finishes it (and chooses, with sel.rows > 0). One kernel for every
// group size: it loops over the group at run time.
__global__ void __launch_bounds__(kThreads)
    PageMassFinishKernel(const __grid_constant__ PageMassParams p, const float* ws,
                         const __grid_constant__ MassSelectParams sel,
                         const __grid_constant__ SideCopies copies) {
  for (int c = 0; c < copies.n; ++c) {  // the side copies, spread over every block
    const uint4* src = static_cast<const uint4*>(copies.src[c]);
    uint4* dst = static_cast<uint4*>(copies.dst[c]);
    for (int64_t w = int64_t{blockIdx.x} * kThreads + threadIdx.x; w < copies.bytes[c] / 16;
         w += int64_t{gridDim.x} * kThreads) {
      dst[w] = src[w];
    }
  }
  const int r = blockIdx.x;
  const int first = p.indptr[r], count = p.indptr[r + 1] - first;
  if (count == 0) return;
  Finish(p, ws, sel, r, p.num_qo_heads / p.kv.num_kv_heads, first, count,
         EntriesOf(p, r, first, count));
}

// Blocks per row: about two entries per warp for the mean row, at most kMaxSplit.
int Split(int64_t num_entries, int rows) {
  constexpr int64_t kMaxSplit = 128;
  const int64_t per_row = (num_entries + rows - 1) / std::max(rows, 1);
  return static_cast<int>(
      std::clamp<int64_t>((per_row + 2 * kWarps - 1) / (2 * kWarps), 1, kMaxSplit));
}

template <int kDim, bool kBf16, int kG>
void Launch(const PageMassParams& p, int64_t num_entries, float scale, float* ws,
            const MassSelectParams& sel, const SideCopies& copies, cudaStream_t stream) {
  const int rows = p.batch * p.kv.num_kv_heads;
  const dim3 grid(rows, Split(num_entries, rows));
  PageMassPartialKernel<kDim, kBf16, kG><<<grid, kThreads, 0, stream>>>(p, scale, ws);
  PageMassFinishKernel<<<rows, kThreads, 0, stream>>>(p, ws, sel, copies);
}

// The smallest compiled group bound (1, 2, 4 or 8) that holds `group`.
template <int kDim, bool kBf16>
void LaunchGroup(const PageMassParams& p, int64_t num_entries, float scale, float* ws,
                 const MassSelectParams& sel, const SideCopies& copies, cudaStream_t stream) {
  const int group = p.num_qo_heads / p.kv.num_kv_heads;
  if (group == 1) return Launch<kDim, kBf16, 1>(p, num_entries, scale, ws, sel, copies, stream);
  if (group == 2) return Launch<kDim, kBf16, 2>(p, num_entries, scale, ws, sel, copies, stream);
  if (group <= 4) return Launch<kDim, kBf16, 4>(p, num_entries, scale, ws, sel, copies, stream);
  Launch<kDim, kBf16, kMaxGroup>(p, num_entries, scale, ws, sel, copies, stream);
}

}  // namespace

size_t PageMassWorkspaceBytes(int64_t num_entries, int32_t group) {
  return static_cast<size_t>(std::max<int64_t>(num_entries, 1)) * group * 2 * sizeof(float);
}

absl::Status PageMass(const PageMassParams& p, int64_t num_entries, void* workspace,
                      const PageMassOptions& options, cudaStream_t stream) {
  if (auto s = kernels::internal::ValidatePageMassShape(p); !s.ok()) return s;
  const int32_t group = p.num_qo_heads / p.kv.num_kv_heads;
  if ((p.kv.head_dim != 64 && p.kv.head_dim != 128) || group > kMaxGroup) {
    return absl::InvalidArgumentError(
        "gpu page mass: head_dim 64 or 128 and at most 8 query heads per KV head are supported");
  }
  if (workspace == nullptr) return absl::InvalidArgumentError("gpu page mass: null workspace");
  if (num_entries < 0) return absl::InvalidArgumentError("gpu page mass: negative num_entries");
  const int32_t rows = p.batch * p.kv.num_kv_heads;
  MassSelectParams sel;  // rows == 0: no choice
  if (options.select != nullptr) {
    sel = *options.select;
    if (sel.rows != rows || sel.indptr != p.indptr || sel.mass != p.mass) {
      return absl::InvalidArgumentError(
          "gpu page mass: the choice must cover the call's rows, with its indptr and masses");
    }
    if (sel.keep == nullptr || sel.split == nullptr || sel.need == nullptr ||
        sel.out_indptr == nullptr || sel.out == nullptr) {
      return absl::InvalidArgumentError("gpu page mass: the choice misses an array");
    }
  }
  const SideCopies& copies = options.copies;
  if (copies.n < 0 || copies.n > SideCopies::kMax) {
    return absl::InvalidArgumentError("gpu page mass: side copies out of [0, SideCopies::kMax]");
  }
  for (int c = 0; c < copies.n; ++c) {
    if (copies.src[c] == nullptr || copies.dst[c] == nullptr || copies.bytes[c] < 0 ||
        ((reinterpret_cast<uintptr_t>(copies.src[c]) | reinterpret_cast<uintptr_t>(copies.dst[c]) |
          static_cast<uintptr_t>(copies.bytes[c])) &
         15u) != 0) {
      return absl::InvalidArgumentError(
          "gpu page mass: a side copy needs non-null, 16-byte aligned addresses and size");
    }
  }
  // Each lane loads its head_dim / 32 halves of a token in one access.
  const int64_t align = p.kv.head_dim / 32;  // elements
  if (reinterpret_cast<uintptr_t>(p.kv.k) % (align * 2) != 0 || p.kv.stride_page % align != 0 ||
      p.kv.stride_head % align != 0 || p.kv.stride_token % align != 0) {
    return absl::InvalidArgumentError(
        "gpu page mass: keys must be aligned to head_dim / 16 bytes (strides too)");
  }
  if (rows == 0) return absl::OkStatus();
  const float scale =
      p.sm_scale > 0.f ? p.sm_scale : 1.f / std::sqrt(static_cast<float>(p.kv.head_dim));
  float* ws = static_cast<float*>(workspace);
  const bool bf16 = p.kv.dtype == DType::kBFloat16;
  if (p.kv.head_dim == 64) {
    bf16 ? LaunchGroup<64, true>(p, num_entries, scale, ws, sel, copies, stream)
         : LaunchGroup<64, false>(p, num_entries, scale, ws, sel, copies, stream);
  } else {
    bf16 ? LaunchGroup<128, true>(p, num_entries, scale, ws, sel, copies, stream)
         : LaunchGroup<128, false>(p, num_entries, scale, ws, sel, copies, stream);
  }
  return internal::LaunchStatus("page mass launch");
}

}  // namespace pagoda::kernels::gpu
