// Sparse paged decode attention and streaming-head attention (split-KV + merge).
//
// One block handles one (sequence, KV head, KV chunk) and all query heads of the GQA group, so
// every KV byte is read once per step. Each token row is read by kDim/8 threads with 16-byte
// loads; the block walks its chunk kStep tokens at a time through a cp.async shared-memory
// pipeline kStages deep (3 or 4, chosen by the plan; page ids one step further ahead). Thread
// groups keep private online-softmax states that are merged through shared memory at the end. A
// split row writes partial (o, lse) states; the last block of each (sequence, KV head) to finish
// (a threadfence + atomic counter per row, reset by that block) combines them in the same launch,
// so a step is one kernel. MergeKernel, a second launch, is kept for plans with fused_merge off.
#include <algorithm>
#include <cmath>

#include "common.cuh"
#include "pagoda/kernels/cuda.h"
#include "validate.h"

namespace pagoda::kernels::gpu {
namespace {

using internal::FastExp2;
using internal::kLn2;
using internal::kLog2e;

constexpr int kThreads = 128;
constexpr int kMaxStep = 64;      // largest tokens-per-step of any instantiation
constexpr int kMaxChunks = 1024;  // the fused merge keeps group x chunks weights in shared memory
constexpr int64_t kShortRowTokens = 16384;  // PlanDecode's automatic pipeline depth: 3 up to here

struct DecodeArgs {
  const uint16_t* q;
  uint16_t* o;
  float* lse;
  const uint16_t* k;
  const uint16_t* v;
  int64_t stride_page, stride_head, stride_token;
  const int32_t* indptr;
  const int32_t* indices;
  const int32_t* last_page_len;
  const uint8_t* is_streaming;
  float* part_o;
  float* part_lse;
  int32_t* counters;  // [rows] arrivals per (sequence, KV head); null: MergeKernel merges
  int32_t num_qo_heads, num_kv_heads, group;
  int32_t log2_page;
  int32_t num_chunks, chunk_tokens;
  int32_t sink, window;
  float scale_log2;
  bool streaming, per_kv_head;
  int32_t stages;  // host-side dispatch only: the pipeline depth of the kernel to launch
};

// One work item: chunk `chunk` of (sequence, KV head) bh. Every thread of the block calls it.
template <bool kBf16, int kDim, int kGMax, int kUnroll, int kStages>
__device__ __forceinline__ void DecodeItem(const DecodeArgs& a, int chunk, int bh) {
  constexpr int kVec = 8;
  constexpr int kTpt = kDim / kVec;         // threads per token row
  constexpr int kGroups = kThreads / kTpt;  // token groups per block
  constexpr int kStep = kGroups * kUnroll;  // tokens per block step
  static_assert(kStep <= kMaxStep);
  const int b = bh / a.num_kv_heads;
  const int h = bh - b * a.num_kv_heads;
  if (a.streaming && a.is_streaming[h] == 0) return;
  const int row = (a.streaming || !a.per_kv_head) ? b : bh;
  const int tid = threadIdx.x;
  const int tg = tid / kTpt;
  const int lane_in = tid % kTpt;

  const int page_begin = a.indptr[row];
  const int npages = a.indptr[row + 1] - page_begin;
  const int len = npages == 0 ? 0 : ((npages - 1) << a.log2_page) + a.last_page_len[row];
  int s0 = len, gap = 0, n = len;
  if (a.streaming) {
    s0 = min(a.sink, len);
    const int w0 = max(s0, len - a.window);
    gap = w0 - s0;
    n = s0 + (len - w0);
  }
  const int begin = chunk * a.chunk_tokens;
  const int end = chunk == a.num_chunks - 1 ? n : min(n, begin + a.chunk_tokens);
  const int page_mask = (1 << a.log2_page) - 1;

  float q[kGMax][kVec];
#pragma unroll
  for (int g = 0; g < kGMax; ++g) {
    if (g < a.group) {
      const uint16_t* qp = a.q +
                           (static_cast<int64_t>(b) * a.num_qo_heads + h * a.group + g) * kDim +
                           lane_in * kVec;
      internal::Unpack8<kBf16>(*reinterpret_cast<const uint4*>(qp), q[g]);
#pragma unroll
      for (int i = 0; i < kVec; ++i) q[g][i] *= a.scale_log2;
    } else {
#pragma unroll
      for (int i = 0; i < kVec; ++i) q[g][i] = 0.f;
    }
  }

  auto page_of = [&](int j) -> int {
    if (j >= end) return -1;
    const int t = j < s0 ? j : j + gap;
    return __ldg(a.indices + page_begin + (t >> a.log2_page));
  };
  auto offset_of = [&](int j, int page) -> int64_t {
    const int t = j < s0 ? j : j + gap;
    return page * a.stride_page + h * a.stride_head + (t & page_mask) * a.stride_token +
           lane_in * kVec;
  };

  float m[kGMax], d[kGMax], acc[kGMax][kVec];
#pragma unroll
  for (int g = 0; g < kGMax; ++g) {
    m[g] = -INFINITY;
    d[g] = 0.f;
#pragma unroll
    for (int i = 0; i < kVec; ++i) acc[g][i] = 0.f;
  }

  // K/V pipeline in shared memory: slot (stage, K or V, u) holds this thread's 16 bytes of token
  // u of a step. Each thread reads back only what it copied itself, so cp.async.wait_group
  // suffices (no barrier) until the final merge reuses the buffer.
  extern __shared__ uint4 smem[];
  auto slot = [&](int stage, int kv, int u) -> uint4* {
    return smem + ((stage * 2 + kv) * kUnroll + u) * kThreads + tid;
  };
  auto issue = [&](int stage, int base, const int(&pg)[kUnroll]) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (pg[u] >= 0) {
        const int64_t off = offset_of(base + u * kGroups + tg, pg[u]);
        internal::CpAsync16(slot(stage, 0, u), a.k + off);
        internal::CpAsync16(slot(stage, 1, u), a.v + off);
      }
    }
    internal::CpAsyncCommit();  // one group per step, empty or not, so counting stays uniform
  };
  int pg_pending[kUnroll];
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    int pg[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) pg[u] = page_of(begin + st * kStep + u * kGroups + tg);
    issue(st, begin + st * kStep, pg);
  }
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    pg_pending[u] = page_of(begin + (kStages - 1) * kStep + u * kGroups + tg);
  }

  int stage = 0;
  for (int base = begin; base < end; base += kStep) {
    issue(stage == 0 ? kStages - 1 : stage - 1, base + (kStages - 1) * kStep, pg_pending);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      pg_pending[u] = page_of(base + kStages * kStep + u * kGroups + tg);
    }
    internal::CpAsyncWait<kStages - 1>();  // this step's group has landed
    uint4 kc[kUnroll], vc[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const bool valid = base + u * kGroups + tg < end;
      kc[u] = valid ? *slot(stage, 0, u) : make_uint4(0, 0, 0, 0);
      vc[u] = valid ? *slot(stage, 1, u) : make_uint4(0, 0, 0, 0);
    }
    stage = stage == kStages - 1 ? 0 : stage + 1;

    float s[kUnroll][kGMax];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float kf[kVec];
      internal::Unpack8<kBf16>(kc[u], kf);
#pragma unroll
      for (int g = 0; g < kGMax; ++g) {
        float x = 0.f;
#pragma unroll
        for (int i = 0; i < kVec; ++i) x = fmaf(q[g][i], kf[i], x);
        s[u][g] = x;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int g = 0; g < kGMax; ++g) {
#pragma unroll
        for (int mask = kTpt / 2; mask > 0; mask >>= 1) {
          s[u][g] += __shfl_xor_sync(0xffffffffu, s[u][g], mask);
        }
      }
      if (base + u * kGroups + tg >= end) {
#pragma unroll
        for (int g = 0; g < kGMax; ++g) s[u][g] = -INFINITY;
      }
    }
#pragma unroll
    for (int g = 0; g < kGMax; ++g) {
      float mx = m[g];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) mx = fmaxf(mx, s[u][g]);
      if (mx == -INFINITY) {
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) s[u][g] = 0.f;
        continue;
      }
      const float sc = FastExp2(m[g] - mx);
      d[g] *= sc;
#pragma unroll
      for (int i = 0; i < kVec; ++i) acc[g][i] *= sc;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        s[u][g] = FastExp2(s[u][g] - mx);
        d[g] += s[u][g];
      }
      m[g] = mx;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float vf[kVec];
      internal::Unpack8<kBf16>(vc[u], vf);
#pragma unroll
      for (int g = 0; g < kGMax; ++g) {
#pragma unroll
        for (int i = 0; i < kVec; ++i) acc[g][i] = fmaf(s[u][g], vf[i], acc[g][i]);
      }
    }
  }
  internal::CpAsyncWait<0>();
  __syncthreads();  // the pipeline buffer becomes the merge buffer

  // Merge the thread groups' states.
  auto& sm_o = *reinterpret_cast<float(*)[kGroups][kGMax][kDim]>(smem);
  auto& sm_m = *reinterpret_cast<float(*)[kGroups][kGMax]>(reinterpret_cast<float*>(smem) +
                                                           kGroups * kGMax * kDim);
  auto& sm_d = *reinterpret_cast<float(*)[kGroups][kGMax]>(reinterpret_cast<float*>(smem) +
                                                           kGroups * kGMax * (kDim + 1));
#pragma unroll
  for (int g = 0; g < kGMax; ++g) {
    if (lane_in == 0) {
      sm_m[tg][g] = m[g];
      sm_d[tg][g] = d[g];
    }
#pragma unroll
    for (int i = 0; i < kVec; ++i) sm_o[tg][g][lane_in * kVec + i] = acc[g][i];
  }
  __syncthreads();
  for (int idx = tid; idx < a.group * kDim; idx += kThreads) {
    const int g = idx / kDim;
    const int dim = idx - g * kDim;
    float mx = -INFINITY;
#pragma unroll
    for (int t = 0; t < kGroups; ++t) mx = fmaxf(mx, sm_m[t][g]);
    float den = 0.f, num = 0.f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int t = 0; t < kGroups; ++t) {
        const float w = FastExp2(sm_m[t][g] - mx);
        den = fmaf(sm_d[t][g], w, den);
        num = fmaf(sm_o[t][g][dim], w, num);
      }
    }
    const int64_t hq = static_cast<int64_t>(b) * a.num_qo_heads + h * a.group + g;
    const float out = den > 0.f ? num / den : 0.f;
    const float lse2 = den > 0.f ? mx + log2f(den) : -INFINITY;
    if (a.num_chunks == 1) {
      a.o[hq * kDim + dim] = internal::Pack1<kBf16>(out);
      if (dim == 0 && a.lse != nullptr) a.lse[hq] = lse2 * kLn2;
    } else {
      const int64_t part = hq * a.num_chunks + chunk;
      a.part_o[part * kDim + dim] = out;
      if (dim == 0) a.part_lse[part] = lse2;
    }
  }
  if (a.num_chunks == 1 || a.counters == nullptr) return;

  // Fused merge: each block publishes its partials (threadfence), then counts itself in; the
  // block that arrives last reads every chunk's partial state back from L2 and writes o and lse.
  __shared__ int merges;
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    merges = atomicAdd(a.counters + bh, 1) == a.num_chunks - 1;
    if (merges) a.counters[bh] = 0;  // every chunk has arrived: ready for the next run
  }
  __syncthreads();
  if (!merges) return;
  __threadfence();
  const int nc = a.num_chunks;
  const int64_t hq0 = static_cast<int64_t>(b) * a.num_qo_heads + h * a.group;
  float* w = reinterpret_cast<float*>(smem);  // [group][nc] normalized chunk weights
  const int warp = tid / 32, lane = tid % 32;
  // Each thread sums 4 dims of one query head over the chunks. The partial outputs of its first
  // quad's first kPre chunks are loaded now, while the weights are worked out (one L2 round trip
  // fewer in this latency-bound tail).
  constexpr int kQuads = kDim / 4;
  constexpr int kPre = 8;
  float4 pre[kPre];
  {
    const int g0 = min(tid / kQuads, a.group - 1);
    const float4* po = reinterpret_cast<const float4*>(a.part_o + (hq0 + g0) * nc * kDim) +
                       (tid - (tid / kQuads) * kQuads);
    const bool mine = tid < a.group * kQuads;
#pragma unroll
    for (int i = 0; i < kPre; ++i) {
      pre[i] = mine && i < nc ? __ldcg(po + i * kQuads) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
  }
  for (int g = warp; g < a.group; g += kThreads / 32) {
    const float* pl = a.part_lse + (hq0 + g) * nc;
    float* wg = w + g * nc;
    float mx = -INFINITY;
    for (int c = lane; c < nc; c += 32) {  // one pass over global memory: lse parked in wg
      const float l = __ldcg(pl + c);
      wg[c] = l;
      mx = fmaxf(mx, l);
    }
#pragma unroll
    for (int mask = 16; mask > 0; mask >>= 1) {
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, mask));
    }
    float den = 0.f;
    for (int c = lane; c < nc; c += 32) {
      const float e = mx == -INFINITY ? 0.f : FastExp2(wg[c] - mx);
      wg[c] = e;
      den += e;
    }
#pragma unroll
    for (int mask = 16; mask > 0; mask >>= 1) den += __shfl_xor_sync(0xffffffffu, den, mask);
    const float inv = den > 0.f ? 1.f / den : 0.f;
    for (int c = lane; c < nc; c += 32) wg[c] *= inv;
    if (lane == 0 && a.lse != nullptr) {
      a.lse[hq0 + g] = den > 0.f ? (mx + log2f(den)) * kLn2 : -INFINITY;
    }
  }
  __syncthreads();
  for (int idx = tid; idx < a.group * kQuads; idx += kThreads) {
    const int g = idx / kQuads;
    const int d4 = idx - g * kQuads;
    const float4* po = reinterpret_cast<const float4*>(a.part_o + (hq0 + g) * nc * kDim) + d4;
    const float* wg = w + g * nc;
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    auto add = [&](float wc, const float4& v) {
      acc[0] = fmaf(wc, v.x, acc[0]);
      acc[1] = fmaf(wc, v.y, acc[1]);
      acc[2] = fmaf(wc, v.z, acc[2]);
      acc[3] = fmaf(wc, v.w, acc[3]);
    };
    int c = 0;
    if (idx == tid) {  // the prefetched chunks
#pragma unroll
      for (int i = 0; i < kPre; ++i) {
        if (i < nc) add(wg[i], pre[i]);
      }
      c = min(nc, kPre);
    }
    for (; c + 8 <= nc; c += 8) {  // 8 chunks' 16-byte loads in flight
      float4 v[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = __ldcg(po + (c + i) * kQuads);
#pragma unroll
      for (int i = 0; i < 8; ++i) add(wg[c + i], v[i]);
    }
    for (; c < nc; ++c) add(wg[c], __ldcg(po + c * kQuads));
    uint16_t* out = a.o + (hq0 + g) * kDim + d4 * 4;
#pragma unroll
    for (int i = 0; i < 4; ++i) out[i] = internal::Pack1<kBf16>(acc[i]);
  }
}

// One block per (chunk, sequence x KV head). GQA groups up to 4 are held to 128 registers so a
// fourth 3-stage block fits on a multiprocessor (no spills; the fused merge had pushed it to 155).
template <bool kBf16, int kDim, int kGMax, int kUnroll, int kStages>
__global__ void __launch_bounds__(kThreads, kGMax <= 4 ? 4 : 1)
    DecodeKernel(const __grid_constant__ DecodeArgs a) {
  DecodeItem<kBf16, kDim, kGMax, kUnroll, kStages>(a, blockIdx.x, blockIdx.y);
}

// Combines the chunks' partial states: one warp per (sequence, query head).
template <bool kBf16, int kDim>
__global__ void __launch_bounds__(kThreads)
    MergeKernel(const __grid_constant__ DecodeArgs a, int total) {
  const int warp = (blockIdx.x * kThreads + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= total) return;
  const int hq = warp % a.num_qo_heads;
  if (a.streaming && a.is_streaming[hq / a.group] == 0) return;
  const float* pl = a.part_lse + static_cast<int64_t>(warp) * a.num_chunks;
  float mx = -INFINITY;
  for (int c = lane; c < a.num_chunks; c += 32) mx = fmaxf(mx, pl[c]);
#pragma unroll
  for (int mask = 16; mask > 0; mask >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, mask));
  constexpr int kPer = kDim / 32;
  float num[kPer] = {};
  float den = 0.f;
  if (mx != -INFINITY) {
    const float* po = a.part_o + static_cast<int64_t>(warp) * a.num_chunks * kDim;
    for (int c = 0; c < a.num_chunks; ++c) {
      const float w = FastExp2(pl[c] - mx);
      den += w;
#pragma unroll
      for (int i = 0; i < kPer; ++i) num[i] = fmaf(w, po[c * kDim + lane + 32 * i], num[i]);
    }
  }
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    a.o[static_cast<int64_t>(warp) * kDim + lane + 32 * i] =
        internal::Pack1<kBf16>(den > 0.f ? num[i] / den : 0.f);
  }
  if (lane == 0 && a.lse != nullptr) a.lse[warp] = den > 0.f ? (mx + log2f(den)) * kLn2 : -INFINITY;
}

template <int kDim, int kGMax, int kUnroll, int kStages>
constexpr size_t DecodeSmemBytes() {
  constexpr size_t pipeline = size_t{kStages} * 2 * kUnroll * kThreads * 16;
  constexpr size_t merge = size_t{kThreads / (kDim / 8)} * kGMax * (kDim + 2) * 4;
  constexpr size_t weights = size_t{kGMax} * kMaxChunks * 4;  // the fused merge's
  constexpr size_t most = pipeline > merge ? pipeline : merge;
  return most > weights ? most : weights;
}

// Launches decode (+ merge). With a.q == nullptr it only prepares the kernel for the current
// device (shared-memory limit above 48 KB; a launch before that fails cleanly with an error) and
// reports how many blocks fit on one multiprocessor in *resident.
template <bool kBf16, int kDim, int kGMax, int kStages>
cudaError_t LaunchStaged(const DecodeArgs& a, int rows, cudaStream_t stream, int* resident) {
  constexpr int kUnroll = kGMax >= 8 ? 2 : 4;
  constexpr size_t kSmem = DecodeSmemBytes<kDim, kGMax, kUnroll, kStages>();
  auto kernel = DecodeKernel<kBf16, kDim, kGMax, kUnroll, kStages>;
  if (a.q == nullptr) {  // PlanDecode: raise the shared-memory limit on the current device
    const cudaError_t attr =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
    if (attr != cudaSuccess || resident == nullptr) return attr;
    return cudaOccupancyMaxActiveBlocksPerMultiprocessor(resident, kernel, kThreads, kSmem);
  }
  kernel<<<dim3(a.num_chunks, rows), kThreads, kSmem, stream>>>(a);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || a.num_chunks == 1 || a.counters != nullptr) return err;
  const int total = rows * a.group;  // (sequence, query head) pairs
  MergeKernel<kBf16, kDim>
      <<<(total * 32 + kThreads - 1) / kThreads, kThreads, 0, stream>>>(a, total);
  return cudaGetLastError();
}

template <bool kBf16, int kDim, int kGMax>
cudaError_t LaunchTyped(const DecodeArgs& a, int rows, cudaStream_t stream, int* resident) {
  return a.stages == 3 ? LaunchStaged<kBf16, kDim, kGMax, 3>(a, rows, stream, resident)
                       : LaunchStaged<kBf16, kDim, kGMax, 4>(a, rows, stream, resident);
}

template <bool kBf16, int kDim>
cudaError_t LaunchGroup(const DecodeArgs& a, int rows, cudaStream_t stream,
                        int* resident = nullptr) {
  if (a.group <= 1) return LaunchTyped<kBf16, kDim, 1>(a, rows, stream, resident);
  if (a.group <= 2) return LaunchTyped<kBf16, kDim, 2>(a, rows, stream, resident);
  if (a.group <= 4) return LaunchTyped<kBf16, kDim, 4>(a, rows, stream, resident);
  return LaunchTyped<kBf16, kDim, 8>(a, rows, stream, resident);
}

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

absl::Status CheckGpuShape(const DecodeParams& p) {
  const PagedKV& kv = p.kv;
  if (kv.head_dim != 64 && kv.head_dim != 128) {
    return absl::InvalidArgumentError("gpu decode: head_dim must be 64 or 128");
  }
  if (p.num_qo_heads / kv.num_kv_heads > 8) {
    return absl::InvalidArgumentError("gpu decode: at most 8 query heads per KV head");
  }
  if (kv.page_size > 1024 || (kv.page_size & (kv.page_size - 1)) != 0) {
    return absl::InvalidArgumentError("gpu decode: page_size must be a power of two <= 1024");
  }
  if (!Aligned16(kv.k) || !Aligned16(kv.v) || !Aligned16(p.q) || kv.stride_page % 8 != 0 ||
      kv.stride_head % 8 != 0 || kv.stride_token % 8 != 0) {
    return absl::InvalidArgumentError(
        "gpu decode: q, K, V must be 16-byte aligned and strides multiples of 8 elements");
  }
  return absl::OkStatus();
}

// The workspace of a split plan: per-row arrival counters first (so a workspace zeroed once keeps
// them at one place), then the partial outputs and their log-sum-exps.
struct WorkspaceLayout {
  size_t counters = 0, part_o = 0, part_lse = 0, bytes = 0;
};

WorkspaceLayout LayoutOf(const DecodePlan& plan) {
  WorkspaceLayout w;
  if (plan.num_chunks <= 1) return w;
  const size_t states = static_cast<size_t>(plan.batch) * plan.num_qo_heads * plan.num_chunks;
  w.part_o = (plan.counter_bytes() + 255) / 256 * 256;
  w.part_lse = w.part_o + states * plan.head_dim * 4;
  w.bytes = w.part_lse + states * 4;
  return w;
}

int Log2(int x) {
  int l = 0;
  while ((1 << l) < x) ++l;
  return l;
}

absl::Status Run(const DecodePlan& plan, const DecodeParams& p, void* workspace, bool streaming,
                 cudaStream_t stream) {
  if (auto s = kernels::internal::ValidateDecodeShape(p, streaming); !s.ok()) return s;
  if (auto s = CheckGpuShape(p); !s.ok()) return s;
  if (plan.streaming != streaming || plan.batch != p.batch || plan.num_qo_heads != p.num_qo_heads ||
      plan.num_kv_heads != p.kv.num_kv_heads || plan.head_dim != p.kv.head_dim ||
      plan.dtype != p.kv.dtype) {
    return absl::InvalidArgumentError("gpu decode: params do not match the plan");
  }
  if (plan.num_chunks > 1 && workspace == nullptr) {
    return absl::InvalidArgumentError("gpu decode: the plan needs a workspace");
  }
  if (plan.num_chunks < 1 || plan.num_chunks > kMaxChunks ||
      (plan.pipeline_stages != 3 && plan.pipeline_stages != 4)) {
    return absl::InvalidArgumentError(
        "gpu decode: plan.num_chunks or pipeline_stages out of range");
  }
  DecodeArgs a;
  a.q = p.q;
  a.o = p.o;
  a.lse = p.lse;
  a.k = p.kv.k;
  a.v = p.kv.v;
  a.stride_page = p.kv.stride_page;
  a.stride_head = p.kv.stride_head;
  a.stride_token = p.kv.stride_token;
  a.indptr = p.table.indptr;
  a.indices = p.table.indices;
  a.last_page_len = p.table.last_page_len;
  a.is_streaming = p.is_streaming;
  const int rows = p.batch * p.kv.num_kv_heads;
  const WorkspaceLayout ws = LayoutOf(plan);
  char* base = static_cast<char*>(workspace);
  a.counters = plan.num_chunks > 1 && plan.fused_merge && base != nullptr
                   ? reinterpret_cast<int32_t*>(base + ws.counters)
                   : nullptr;
  a.part_o = base == nullptr ? nullptr : reinterpret_cast<float*>(base + ws.part_o);
  a.part_lse = base == nullptr ? nullptr : reinterpret_cast<float*>(base + ws.part_lse);
  a.num_qo_heads = p.num_qo_heads;
  a.num_kv_heads = p.kv.num_kv_heads;
  a.group = p.num_qo_heads / p.kv.num_kv_heads;
  a.log2_page = Log2(p.kv.page_size);
  a.num_chunks = plan.num_chunks;
  a.chunk_tokens = plan.chunk_tokens;
  a.sink = p.sink_tokens;
  a.window = p.window_tokens;
  const float scale = p.sm_scale > 0.f ? p.sm_scale : 1.f / std::sqrt(float(p.kv.head_dim));
  a.scale_log2 = scale * kLog2e;
  a.streaming = streaming;
  a.per_kv_head = p.per_kv_head;
  a.stages = plan.pipeline_stages;
  if (a.counters != nullptr && !plan.zeroed_workspace) {
    if (auto s = internal::CudaStatus(cudaMemsetAsync(a.counters, 0, plan.counter_bytes(), stream),
                                      "decode counters");
        !s.ok()) {
      return s;
    }
  }
  const bool bf16 = p.kv.dtype == DType::kBFloat16;
  cudaError_t err;
  if (p.kv.head_dim == 64) {
    err = bf16 ? LaunchGroup<true, 64>(a, rows, stream) : LaunchGroup<false, 64>(a, rows, stream);
  } else {
    err = bf16 ? LaunchGroup<true, 128>(a, rows, stream) : LaunchGroup<false, 128>(a, rows, stream);
  }
  return internal::CudaStatus(err, streaming ? "streaming decode launch" : "sparse decode launch");
}

}  // namespace

absl::StatusOr<DecodePlan> PlanDecode(const DecodeParams& shape, bool streaming,
                                      int64_t max_tokens_per_row,
                                      const DecodePlanOptions& options) {
  const PagedKV& kv = shape.kv;
  if (shape.batch <= 0 || shape.num_qo_heads <= 0 || kv.num_kv_heads <= 0 ||
      shape.num_qo_heads % kv.num_kv_heads != 0) {
    return absl::InvalidArgumentError("plan decode: bad batch or head counts");
  }
  if (kv.head_dim != 64 && kv.head_dim != 128) {
    return absl::InvalidArgumentError("plan decode: head_dim must be 64 or 128");
  }
  if (kv.dtype != DType::kFloat16 && kv.dtype != DType::kBFloat16) {
    return absl::InvalidArgumentError("plan decode: unknown dtype");
  }
  if (shape.num_qo_heads / kv.num_kv_heads > 8) {
    return absl::InvalidArgumentError("plan decode: at most 8 query heads per KV head");
  }
  if (max_tokens_per_row < 0 || max_tokens_per_row > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError("plan decode: max_tokens_per_row out of range");
  }
  if (options.blocks_per_sm < 0 || options.min_chunk_tokens <= 0 || options.max_chunks <= 0 ||
      options.max_chunks > kMaxChunks || options.chunk_overhead_tokens < 0 ||
      (options.pipeline_stages != 0 && options.pipeline_stages != 3 &&
       options.pipeline_stages != 4)) {
    return absl::InvalidArgumentError("plan decode: options must be positive");
  }
  int sms = options.num_sms;
  if (sms <= 0) {
    int dev = 0;
    if (auto s = internal::CudaStatus(cudaGetDevice(&dev), "cudaGetDevice"); !s.ok()) return s;
    if (auto s = internal::CudaStatus(
            cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "sm count");
        !s.ok()) {
      return s;
    }
  }
  DecodePlan plan;
  plan.streaming = streaming;
  plan.batch = shape.batch;
  plan.num_qo_heads = shape.num_qo_heads;
  plan.num_kv_heads = kv.num_kv_heads;
  plan.head_dim = kv.head_dim;
  plan.dtype = kv.dtype;
  plan.fused_merge = options.fused_merge;
  plan.zeroed_workspace = options.zeroed_workspace;
  // Short rows (one wave, every block's fill and drain in the step's critical path) ran faster
  // with 3 stages, long rows (many waves, steady streaming) with 4: bench/RESULTS.md.
  plan.pipeline_stages = options.pipeline_stages != 0            ? options.pipeline_stages
                         : max_tokens_per_row <= kShortRowTokens ? 3
                                                                 : 4;
  // Prepare the kernel now (outside any graph capture) and ask how many blocks fit per SM.
  DecodeArgs probe{};
  probe.group = shape.num_qo_heads / kv.num_kv_heads;
  probe.stages = plan.pipeline_stages;
  int resident = 0;
  const cudaError_t attr =
      kv.head_dim == 64
          ? (kv.dtype == DType::kBFloat16 ? LaunchGroup<true, 64>(probe, 0, nullptr, &resident)
                                          : LaunchGroup<false, 64>(probe, 0, nullptr, &resident))
          : (kv.dtype == DType::kBFloat16 ? LaunchGroup<true, 128>(probe, 0, nullptr, &resident)
                                          : LaunchGroup<false, 128>(probe, 0, nullptr, &resident));
  if (auto s = internal::CudaStatus(attr, "decode kernel attribute"); !s.ok()) return s;
  if (options.blocks_per_sm > 0) resident = options.blocks_per_sm;
  // Split each row into c chunks minimizing waves(c) * (tokens per chunk + per-block overhead):
  // enough blocks to fill the GPU, few enough that a last partial wave and the fixed cost of
  // each block (page-table reads, pipeline fill, merge) stay small.
  const int64_t rows = int64_t{shape.batch} * kv.num_kv_heads;
  const int64_t slots = std::max<int64_t>(1, int64_t{sms} * std::max(resident, 1));
  const int64_t most = std::min<int64_t>(
      options.max_chunks, std::max<int64_t>(1, (max_tokens_per_row + options.min_chunk_tokens - 1) /
                                                   options.min_chunk_tokens));
  int64_t chunks = 1;
  double best = -1;
  for (int64_t c = 1; c <= most; ++c) {
    const double waves = static_cast<double>((rows * c + slots - 1) / slots);
    const double cost = waves * (static_cast<double>(max_tokens_per_row) / static_cast<double>(c) +
                                 options.chunk_overhead_tokens);
    if (best < 0 || cost < best) {
      best = cost;
      chunks = c;
    }
  }
  int64_t chunk_tokens = (max_tokens_per_row + chunks - 1) / chunks;
  chunk_tokens = std::max<int64_t>(kMaxStep, (chunk_tokens + kMaxStep - 1) / kMaxStep * kMaxStep);
  chunks = std::max<int64_t>(1, (max_tokens_per_row + chunk_tokens - 1) / chunk_tokens);
  plan.num_chunks = static_cast<int32_t>(chunks);
  plan.chunk_tokens = static_cast<int32_t>(chunk_tokens);
  plan.workspace_bytes = LayoutOf(plan).bytes;
  return plan;
}

absl::Status SparseDecode(const DecodePlan& plan, const DecodeParams& p, void* workspace,
                          cudaStream_t stream) {
  return Run(plan, p, workspace, /*streaming=*/false, stream);
}

absl::Status StreamingDecode(const DecodePlan& plan, const DecodeParams& p, void* workspace,
                             cudaStream_t stream) {
  return Run(plan, p, workspace, /*streaming=*/true, stream);
}

}  // namespace pagoda::kernels::gpu
