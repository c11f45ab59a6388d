// Block-sparse causal prefill attention on tensor cores (FlashAttention-2 style).
//
// One block per (query tile, query head, sequence); warp w owns query rows [16w, 16w + 16) of the
// tile. The block walks a list of key positions in steps of kBlockN = 64 keys, in at most two
// segments: (dense) [0, last query]; (streaming) the sinks, then the window band
// [first query - window + 1, last query]; (selected pages) the selected context pages' tokens,
// then the chunk itself. Key tiles outside every segment are never read. Each step's K and V rows
// are gathered through the page table into shared memory with cp.async (double-buffered: step
// s + 1 loads while step s computes), with the key's position beside them; S = Q K^T and O += P V
// run on mma.sync m16n8k16 with fp32 accumulators, the mask (causal, Lambda band, segment ends)
// is applied per element, and the online softmax keeps one (max, sum) per row.
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

constexpr int kBlockN = 64;  // keys per step

struct PrefillArgs {
  const uint16_t* q;
  uint16_t* o;
  float* lse;
  const uint16_t* k;
  const uint16_t* v;
  int64_t stride_page, stride_head, stride_token;
  const int32_t* indptr;
  const int32_t* indices;
  const int32_t* last_page_len;
  const int32_t* q_indptr;
  const uint8_t* is_streaming;
  const int32_t* select_indptr;
  const int32_t* select_pages;
  int32_t num_qo_heads, num_kv_heads, group;
  int32_t log2_page;
  int32_t sink, window;
  float scale_log2;
  bool per_kv_head;  // table rows per (sequence, KV head)
};

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void Ldmatrix4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddr(p)));
}

__device__ __forceinline__ void Ldmatrix4Trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddr(p)));
}

// d += a (16x16, row) * b (16x8, col), fp32 accumulators.
template <bool kBf16>
__device__ __forceinline__ void Mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1) {
  if constexpr (kBf16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two floats as two 16-bit values in one register, the first in the low half.
template <bool kBf16>
__device__ __forceinline__ uint32_t Pack2(float lo, float hi) {
  return static_cast<uint32_t>(internal::Pack1<kBf16>(lo)) |
         (static_cast<uint32_t>(internal::Pack1<kBf16>(hi)) << 16);
}

template <int kDim, int kWarps>
struct Smem {
  static constexpr int kTileQ = 16 * kWarps;
  static constexpr int kStride = kDim + 8;  // halves per row: 16 bytes of padding keep ldmatrix
                                            // rows on distinct banks
  static constexpr size_t kQ = size_t{kTileQ} * kStride * 2;
  static constexpr size_t kKV = size_t{kBlockN} * kStride * 2;  // one K or V buffer
  static constexpr size_t kBytes = kQ + 4 * kKV + 2 * kBlockN * 4;
};

template <bool kBf16, int kDim, int kWarps>
__global__ void __launch_bounds__(kWarps * 32)
    PrefillKernel(const __grid_constant__ PrefillArgs a) {
  using S = Smem<kDim, kWarps>;
  constexpr int kThreads = kWarps * 32;
  constexpr int kTileQ = S::kTileQ;
  constexpr int kStride = S::kStride;
  constexpr int kChunks = kDim / 8;  // 16-byte chunks per row
  const int tile = blockIdx.x, hq = blockIdx.y, b = blockIdx.z;
  const int h = hq / a.group;
  const int q_begin = a.q_indptr[b];
  const int n = a.q_indptr[b + 1] - q_begin;
  const int row0 = tile * kTileQ;
  if (row0 >= n) return;
  const int trow = a.per_kv_head ? b * a.num_kv_heads + h : b;  // the table row
  const int page_begin = a.indptr[trow];
  const int npages = a.indptr[trow + 1] - page_begin;
  const int len = npages == 0 ? 0 : ((npages - 1) << a.log2_page) + a.last_page_len[trow];
  const int context = len - n;
  const int t0 = context + row0;                           // first query position of the tile
  const int t_last = context + min(n, row0 + kTileQ) - 1;  // last one
  const bool streaming = a.is_streaming != nullptr && a.is_streaming[h] != 0;
  const bool selected = !streaming && a.select_indptr != nullptr;
  const int page_size = 1 << a.log2_page;
  const int page_mask = page_size - 1;

  // Segments of key positions: seg 0 has n0 keys (virtual indices into the selected pages'
  // tokens when `selected`, else positions [0, n0)); seg 1 is positions [seg1, seg1 + n1).
  int n0, seg1, n1, sel_begin = 0;
  if (selected) {
    const int r = b * a.num_kv_heads + h;
    sel_begin = a.select_indptr[r];
    n0 = (a.select_indptr[r + 1] - sel_begin) * page_size;
    seg1 = context;
    n1 = t_last + 1 - context;
  } else if (streaming) {
    n0 = min(a.sink, t_last + 1);
    seg1 = max(n0, t0 - a.window + 1);
    n1 = a.window > 0 ? max(0, t_last + 1 - seg1) : 0;
  } else {
    n0 = t_last + 1;
    seg1 = 0;
    n1 = 0;
  }
  const int steps0 = (n0 + kBlockN - 1) / kBlockN;
  const int steps = steps0 + (n1 + kBlockN - 1) / kBlockN;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint16_t* sq = reinterpret_cast<uint16_t*>(smem_raw);
  uint16_t* sk = reinterpret_cast<uint16_t*>(smem_raw + S::kQ);  // [2][kBlockN][kStride]
  uint16_t* sv = reinterpret_cast<uint16_t*>(smem_raw + S::kQ + 2 * S::kKV);
  int* spos = reinterpret_cast<int*>(smem_raw + S::kQ + 4 * S::kKV);  // [2][kBlockN]
  const int tid = threadIdx.x;

  // Position of key u of step s, or -1.
  auto key_pos = [&](int s, int u) -> int {
    if (s < steps0) {
      const int vi = s * kBlockN + u;
      if (vi >= n0) return -1;
      if (!selected) return vi;
      const int pos =
          __ldg(a.select_pages + sel_begin + (vi >> a.log2_page)) * page_size + (vi & page_mask);
      return pos < context ? pos : -1;
    }
    const int vi = (s - steps0) * kBlockN + u;
    return vi < n1 ? seg1 + vi : -1;
  };
  auto load_kv = [&](int s, int buf) {
    for (int c = tid; c < kBlockN * kChunks; c += kThreads) {
      const int u = c / kChunks, part = c % kChunks;
      const int pos = key_pos(s, u);
      uint16_t* kd = sk + (buf * kBlockN + u) * kStride + part * 8;
      uint16_t* vd = sv + (buf * kBlockN + u) * kStride + part * 8;
      if (pos >= 0) {
        const int page = __ldg(a.indices + page_begin + (pos >> a.log2_page));
        const int64_t off = page * a.stride_page + h * a.stride_head +
                            (pos & page_mask) * a.stride_token + part * 8;
        internal::CpAsync16(kd, a.k + off);
        internal::CpAsync16(vd, a.v + off);
      } else {  // zeros, never garbage: P = 0 times a NaN would still be NaN
        *reinterpret_cast<uint4*>(kd) = make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4*>(vd) = make_uint4(0, 0, 0, 0);
      }
      if (part == 0) spos[buf * kBlockN + u] = pos;
    }
    internal::CpAsyncCommit();
  };

  if (steps > 0) load_kv(0, 0);
  // The tile's queries (zero rows past the chunk).
  for (int c = tid; c < kTileQ * kChunks; c += kThreads) {
    const int r = c / kChunks, part = c % kChunks;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (row0 + r < n) {
      val = *reinterpret_cast<const uint4*>(
          a.q + (static_cast<int64_t>(q_begin + row0 + r) * a.num_qo_heads + hq) * kDim + part * 8);
    }
    *reinterpret_cast<uint4*>(sq + r * kStride + part * 8) = val;
  }
  __syncthreads();

  const int warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, tq = lane % 4;
  uint32_t qf[kDim / 16][4];
#pragma unroll
  for (int kk = 0; kk < kDim / 16; ++kk) {
    Ldmatrix4(qf[kk], sq + (warp * 16 + (lane % 16)) * kStride + kk * 16 + (lane / 16) * 8);
  }
  float oacc[kDim / 8][4];
#pragma unroll
  for (int j = 0; j < kDim / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) oacc[j][e] = 0.f;
  }
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const int my_t[2] = {t0 + warp * 16 + g, t0 + warp * 16 + g + 8};  // this thread's two rows

  for (int s = 0; s < steps; ++s) {
    const int buf = s & 1;
    if (s + 1 < steps) {
      load_kv(s + 1, buf ^ 1);
      internal::CpAsyncWait<1>();
    } else {
      internal::CpAsyncWait<0>();
    }
    __syncthreads();
    const uint16_t* kb = sk + buf * kBlockN * kStride;
    const uint16_t* vb = sv + buf * kBlockN * kStride;
    const int* pb = spos + buf * kBlockN;

    float sacc[kBlockN / 8][4];
#pragma unroll
    for (int j = 0; j < kBlockN / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) sacc[j][e] = 0.f;
    }
#pragma unroll
    for (int kk = 0; kk < kDim / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < kBlockN / 16; ++np) {
        uint32_t r[4];
        Ldmatrix4(r, kb + (np * 16 + (lane % 8) + (lane / 16) * 8) * kStride + kk * 16 +
                         ((lane / 8) % 2) * 8);
        Mma<kBf16>(sacc[2 * np], qf[kk], r[0], r[1]);
        Mma<kBf16>(sacc[2 * np + 1], qf[kk], r[2], r[3]);
      }
    }
    // Mask and scale (log2 domain), then the online softmax of rows g and g + 8.
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int j = 0; j < kBlockN / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int pos = pb[j * 8 + 2 * tq + (e & 1)];
        const int t = my_t[e >> 1];
        bool keep = pos >= 0 && pos <= t;
        if (streaming) keep = keep && (pos < a.sink || pos > t - a.window);
        sacc[j][e] = keep ? sacc[j][e] * a.scale_log2 : -INFINITY;
        mx[e >> 1] = fmaxf(mx[e >> 1], sacc[j][e]);
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
    }
    float alpha[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      alpha[r] = mx[r] == -INFINITY ? 1.f : FastExp2(m[r] - mx[r]);
      m[r] = mx[r];
      l[r] *= alpha[r];
    }
#pragma unroll
    for (int j = 0; j < kBlockN / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1;
        const float p = m[r] == -INFINITY ? 0.f : FastExp2(sacc[j][e] - m[r]);
        sacc[j][e] = p;
        l[r] += p;
      }
    }
#pragma unroll
    for (int j = 0; j < kDim / 8; ++j) {
      oacc[j][0] *= alpha[0];
      oacc[j][1] *= alpha[0];
      oacc[j][2] *= alpha[1];
      oacc[j][3] *= alpha[1];
    }
    // O += P V: P's accumulator layout is the A-fragment layout of 16-key slices.
#pragma unroll
    for (int ks = 0; ks < kBlockN / 16; ++ks) {
      uint32_t pa[4];
      pa[0] = Pack2<kBf16>(sacc[2 * ks][0], sacc[2 * ks][1]);
      pa[1] = Pack2<kBf16>(sacc[2 * ks][2], sacc[2 * ks][3]);
      pa[2] = Pack2<kBf16>(sacc[2 * ks + 1][0], sacc[2 * ks + 1][1]);
      pa[3] = Pack2<kBf16>(sacc[2 * ks + 1][2], sacc[2 * ks + 1][3]);
#pragma unroll
      for (int dp = 0; dp < kDim / 16; ++dp) {
        uint32_t r[4];
        Ldmatrix4Trans(r, vb + (ks * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * kStride + dp * 16 +
                              (lane / 16) * 8);
        Mma<kBf16>(oacc[2 * dp], pa, r[0], r[1]);
        Mma<kBf16>(oacc[2 * dp + 1], pa, r[2], r[3]);
      }
    }
    __syncthreads();  // every warp is done with `buf` before step s + 2 refills it
  }

  // Row sums across the quad, normalize, store.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + warp * 16 + g + 8 * r;
    if (row >= n) continue;
    const int64_t out = static_cast<int64_t>(q_begin + row) * a.num_qo_heads + hq;
    const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
#pragma unroll
    for (int j = 0; j < kDim / 8; ++j) {
      *reinterpret_cast<uint32_t*>(a.o + out * kDim + j * 8 + 2 * tq) =
          Pack2<kBf16>(oacc[j][2 * r] * inv, oacc[j][2 * r + 1] * inv);
    }
    if (tq == 0 && a.lse != nullptr) {
      a.lse[out] = l[r] > 0.f ? (m[r] + log2f(l[r])) * kLn2 : -INFINITY;
    }
  }
}

// With a.q == nullptr: only raises the kernel's shared-memory limit on the current device.
template <bool kBf16, int kDim, int kWarps>
cudaError_t LaunchTyped(const PrefillArgs& a, dim3 grid, cudaStream_t stream) {
  constexpr size_t kSmem = Smem<kDim, kWarps>::kBytes;
  auto kernel = PrefillKernel<kBf16, kDim, kWarps>;
  if (a.q == nullptr) {
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  }
  kernel<<<grid, kWarps * 32, kSmem, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t Launch(bool bf16, int dim, int tile_q, const PrefillArgs& a, dim3 grid,
                   cudaStream_t stream) {
  if (dim == 64) {
    if (tile_q == 64) {
      return bf16 ? LaunchTyped<true, 64, 4>(a, grid, stream)
                  : LaunchTyped<false, 64, 4>(a, grid, stream);
    }
    return bf16 ? LaunchTyped<true, 64, 8>(a, grid, stream)
                : LaunchTyped<false, 64, 8>(a, grid, stream);
  }
  if (tile_q == 64) {
    return bf16 ? LaunchTyped<true, 128, 4>(a, grid, stream)
                : LaunchTyped<false, 128, 4>(a, grid, stream);
  }
  return bf16 ? LaunchTyped<true, 128, 8>(a, grid, stream)
              : LaunchTyped<false, 128, 8>(a, grid, stream);
}

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

int Log2(int x) {
  int l = 0;
  while ((1 << l) < x) ++l;
  return l;
}

absl::Status CheckPlanShape(int32_t batch, int32_t num_qo_heads, int32_t num_kv_heads,
                            int32_t head_dim, DType dtype, int32_t tile_q) {
  if (batch <= 0 || num_qo_heads <= 0 || num_kv_heads <= 0 || num_qo_heads % num_kv_heads != 0) {
    return absl::InvalidArgumentError("gpu prefill: bad batch or head counts");
  }
  if (batch > 65535 || num_qo_heads > 65535) {
    return absl::InvalidArgumentError("gpu prefill: batch and num_qo_heads must be <= 65535");
  }
  if (head_dim != 64 && head_dim != 128) {
    return absl::InvalidArgumentError("gpu prefill: head_dim must be 64 or 128");
  }
  if (dtype != DType::kFloat16 && dtype != DType::kBFloat16) {
    return absl::InvalidArgumentError("gpu prefill: unknown dtype");
  }
  if (tile_q != 64 && tile_q != 128) {
    return absl::InvalidArgumentError("gpu prefill: tile_q must be 64 or 128");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<PrefillPlan> PlanPrefill(const PrefillParams& shape, int64_t max_queries_per_seq,
                                        const PrefillPlanOptions& options) {
  if (auto s = CheckPlanShape(shape.batch, shape.num_qo_heads, shape.kv.num_kv_heads,
                              shape.kv.head_dim, shape.kv.dtype, options.tile_q);
      !s.ok()) {
    return s;
  }
  if (max_queries_per_seq < 0 || max_queries_per_seq > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError("gpu prefill: max_queries_per_seq out of range");
  }
  PrefillPlan plan;
  plan.batch = shape.batch;
  plan.num_qo_heads = shape.num_qo_heads;
  plan.num_kv_heads = shape.kv.num_kv_heads;
  plan.head_dim = shape.kv.head_dim;
  plan.dtype = shape.kv.dtype;
  plan.tile_q = options.tile_q;
  plan.max_q_tiles = static_cast<int32_t>((max_queries_per_seq + plan.tile_q - 1) / plan.tile_q);
  PrefillArgs probe{};
  const cudaError_t err =
      Launch(plan.dtype == DType::kBFloat16, plan.head_dim, plan.tile_q, probe, dim3(1), nullptr);
  if (auto s = internal::CudaStatus(err, "prefill kernel attribute"); !s.ok()) return s;
  return plan;
}

absl::Status BlockSparsePrefill(const PrefillPlan& plan, const PrefillParams& p, void* workspace,
                                cudaStream_t stream) {
  (void)workspace;
  if (auto s = kernels::internal::ValidatePrefillShape(p); !s.ok()) return s;
  if (auto s = CheckPlanShape(plan.batch, plan.num_qo_heads, plan.num_kv_heads, plan.head_dim,
                              plan.dtype, plan.tile_q);
      !s.ok()) {
    return s;
  }
  if (plan.batch != p.batch || plan.num_qo_heads != p.num_qo_heads ||
      plan.num_kv_heads != p.kv.num_kv_heads || plan.head_dim != p.kv.head_dim ||
      plan.dtype != p.kv.dtype || plan.max_q_tiles < 0 || plan.max_q_tiles > (1 << 30)) {
    return absl::InvalidArgumentError("gpu prefill: params do not match the plan");
  }
  const PagedKV& kv = p.kv;
  if (kv.page_size > 1024 || (kv.page_size & (kv.page_size - 1)) != 0) {
    return absl::InvalidArgumentError("gpu prefill: page_size must be a power of two <= 1024");
  }
  if (!Aligned16(kv.k) || !Aligned16(kv.v) || !Aligned16(p.q) || !Aligned16(p.o) ||
      kv.stride_page % 8 != 0 || kv.stride_head % 8 != 0 || kv.stride_token % 8 != 0) {
    return absl::InvalidArgumentError(
        "gpu prefill: q, o, K, V must be 16-byte aligned and strides multiples of 8 elements");
  }
  if (plan.max_q_tiles == 0) return absl::OkStatus();  // no queries
  PrefillArgs a;
  a.q = p.q;
  a.o = p.o;
  a.lse = p.lse;
  a.k = kv.k;
  a.v = kv.v;
  a.stride_page = kv.stride_page;
  a.stride_head = kv.stride_head;
  a.stride_token = kv.stride_token;
  a.indptr = p.table.indptr;
  a.indices = p.table.indices;
  a.last_page_len = p.table.last_page_len;
  a.per_kv_head = p.per_kv_head;
  a.q_indptr = p.q_indptr;
  a.is_streaming = p.is_streaming;
  a.select_indptr = p.select_indptr;
  a.select_pages = p.select_pages;
  a.num_qo_heads = p.num_qo_heads;
  a.num_kv_heads = kv.num_kv_heads;
  a.group = p.num_qo_heads / kv.num_kv_heads;
  a.log2_page = Log2(kv.page_size);
  a.sink = p.sink_tokens;
  a.window = p.window_tokens;
  const float scale = p.sm_scale > 0.f ? p.sm_scale : 1.f / std::sqrt(float(kv.head_dim));
  a.scale_log2 = scale * kLog2e;
  const dim3 grid(plan.max_q_tiles, p.num_qo_heads, p.batch);
  return internal::CudaStatus(
      Launch(kv.dtype == DType::kBFloat16, kv.head_dim, plan.tile_q, a, grid, stream),
      "prefill launch");
}

}  // namespace pagoda::kernels::gpu
