// Page summary update: one block per (updated page, KV head), one thread per dimension. The
// device ids are not range-checked here (the CPU reference does, on the host).
#include <algorithm>

#include "common.cuh"
#include "pagoda/kernels/cuda.h"
#include "validate.h"

namespace pagoda::kernels::gpu {
namespace {

template <bool kBf16>
__global__ void SummaryKernel(const __grid_constant__ SummaryUpdateParams p) {
  const int i = blockIdx.x;
  const int h = blockIdx.y;
  const int dim = threadIdx.x;
  const PagedKV& kv = p.kv;
  const PageSummaries& sm = p.summaries;
  if (dim >= kv.head_dim) return;
  const int page = p.summary_pages != nullptr ? p.summary_pages[i] : p.pages[i];
  const int64_t kv_page = p.head_pages != nullptr
                              ? p.head_pages[static_cast<int64_t>(i) * kv.num_kv_heads + h]
                              : p.pages[i];
  const int c0 = p.old_count != nullptr ? p.old_count[i] : sm.count[page];
  const int c1 = p.new_count[i];
  const int sub = kv.page_size / sm.sub_pages;
  const uint16_t* keys = kv.k + kv_page * kv.stride_page + h * kv.stride_head + dim;
  for (int s = c0 / sub; s < sm.sub_pages && s * sub < c1; ++s) {
    const int begin = s * sub;
    const int end = min(c1, begin + sub);
    const int fresh = max(c0, begin);
    const int first = sm.mean != nullptr ? begin : fresh;  // without means: the new tokens only
    const int64_t at =
        ((static_cast<int64_t>(page) * sm.sub_pages + s) * kv.num_kv_heads + h) * kv.head_dim + dim;
    const bool had = c0 > begin;
    float mn = had ? internal::Unpack1<kBf16>(sm.min[at]) : INFINITY;
    float mx = had ? internal::Unpack1<kBf16>(sm.max[at]) : -INFINITY;
    float sum = 0.f;
    for (int t = first; t < end; ++t) {
      const float x = internal::Unpack1<kBf16>(keys[t * kv.stride_token]);
      sum += x;
      if (t >= fresh) {
        mn = fminf(mn, x);
        mx = fmaxf(mx, x);
      }
    }
    sm.min[at] = internal::Pack1<kBf16>(mn);
    sm.max[at] = internal::Pack1<kBf16>(mx);
    if (sm.mean != nullptr) {
      sm.mean[at] = internal::Pack1<kBf16>(sum * (1.f / static_cast<float>(end - begin)));
    }
  }
  // count[page] is published by CommitCountKernel: blocks of other heads of this page may still
  // be about to read the old count.
}

__global__ void CommitCountKernel(const int32_t* pages, const int32_t* new_count, int n,
                                  int32_t* count) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) count[pages[i]] = new_count[i];
}

}  // namespace

absl::Status UpdateSummaries(const SummaryUpdateParams& p, cudaStream_t stream) {
  if (auto s = kernels::internal::ValidateSummaryUpdateShape(p); !s.ok()) return s;
  if (p.kv.head_dim > 1024) return absl::InvalidArgumentError("gpu summaries: head_dim > 1024");
  if (p.num_updates == 0) return absl::OkStatus();
  const dim3 grid(p.num_updates, p.kv.num_kv_heads);
  const int threads = (p.kv.head_dim + 31) / 32 * 32;
  if (p.kv.dtype == DType::kBFloat16) {
    SummaryKernel<true><<<grid, threads, 0, stream>>>(p);
  } else {
    SummaryKernel<false><<<grid, threads, 0, stream>>>(p);
  }
  if (auto s = internal::LaunchStatus("summary launch"); !s.ok()) return s;
  CommitCountKernel<<<(p.num_updates + 255) / 256, 256, 0, stream>>>(
      p.summary_pages != nullptr ? p.summary_pages : p.pages, p.new_count, p.num_updates,
      p.summaries.count);
  return internal::LaunchStatus("summary count launch");
}

}  // namespace pagoda::kernels::gpu
