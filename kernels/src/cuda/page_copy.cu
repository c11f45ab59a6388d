// Page gather / scatter between a slot pool and a contiguous staging buffer: one block per page,
// 16-byte copies when everything is 16-byte aligned; and the decode worker's token rows (K and V
// of new tokens into their pool rows, the row ids in the launch's parameters or device memory).
#include "common.cuh"
#include "pagoda/kernels/cuda.h"
#include "validate.h"

namespace pagoda::kernels::gpu {
namespace {

constexpr int kCopyThreads = 256;

template <typename Word, bool kGather>
__global__ void __launch_bounds__(kCopyThreads)
    CopyKernel(const __grid_constant__ PageCopyParams p) {
  const int i = blockIdx.x;
  const int64_t words = p.page_bytes / static_cast<int64_t>(sizeof(Word));
  Word* slot = reinterpret_cast<Word*>(p.pool + p.pages[i] * p.pool_stride_bytes);
  Word* stage = reinterpret_cast<Word*>(p.staging + i * p.page_bytes);
  const Word* src = kGather ? slot : stage;
  Word* dst = kGather ? stage : slot;
  for (int64_t w = threadIdx.x; w < words; w += kCopyThreads) dst[w] = src[w];
}

absl::Status Copy(const PageCopyParams& p, bool gather, cudaStream_t stream) {
  if (auto s = kernels::internal::ValidatePageCopyShape(p); !s.ok()) return s;
  if (p.num_pages == 0) return absl::OkStatus();
  const bool wide =
      ((reinterpret_cast<uintptr_t>(p.pool) | reinterpret_cast<uintptr_t>(p.staging) |
        static_cast<uintptr_t>(p.pool_stride_bytes) | static_cast<uintptr_t>(p.page_bytes)) &
       15u) == 0;
  if (wide) {
    gather ? CopyKernel<uint4, true><<<p.num_pages, kCopyThreads, 0, stream>>>(p)
           : CopyKernel<uint4, false><<<p.num_pages, kCopyThreads, 0, stream>>>(p);
  } else {
    gather ? CopyKernel<uint8_t, true><<<p.num_pages, kCopyThreads, 0, stream>>>(p)
           : CopyKernel<uint8_t, false><<<p.num_pages, kCopyThreads, 0, stream>>>(p);
  }
  return internal::LaunchStatus(gather ? "gather launch" : "scatter launch");
}

// Token rows: block i copies k's row i (its first half of threads) and v's row i (the second).
constexpr int kRowThreads = 64;

template <typename Word>
__global__ void __launch_bounds__(kRowThreads)
    TokenRowsKernel(const __grid_constant__ TokenRowsParams p) {
  const int i = blockIdx.x;
  const bool is_v = threadIdx.x >= kRowThreads / 2;
  const int64_t words = p.row_bytes / static_cast<int64_t>(sizeof(Word));
  const Word* src = reinterpret_cast<const Word*>((is_v ? p.v : p.k) +
                                                  kernels::internal::TokenRowOffset(p, i, !is_v));
  const int32_t row =
      p.rows != nullptr ? p.rows[is_v ? p.num_rows + i : i] : (is_v ? p.v_rows[i] : p.k_rows[i]);
  Word* dst = reinterpret_cast<Word*>(p.pool + int64_t{row} * p.row_bytes);
  for (int64_t w = threadIdx.x % (kRowThreads / 2); w < words; w += kRowThreads / 2) {
    dst[w] = src[w];
  }
}

}  // namespace

absl::Status WriteTokenRows(const TokenRowsParams& p, cudaStream_t stream) {
  if (auto s = kernels::internal::ValidateTokenRowsShape(p); !s.ok()) return s;
  if (p.num_rows == 0) return absl::OkStatus();
  const bool wide =
      ((reinterpret_cast<uintptr_t>(p.pool) | reinterpret_cast<uintptr_t>(p.k) |
        reinterpret_cast<uintptr_t>(p.v) | static_cast<uintptr_t>(p.row_bytes) |
        static_cast<uintptr_t>(p.k_token_bytes) | static_cast<uintptr_t>(p.v_token_bytes)) &
       15u) == 0;
  wide ? TokenRowsKernel<uint4><<<p.num_rows, kRowThreads, 0, stream>>>(p)
       : TokenRowsKernel<uint8_t><<<p.num_rows, kRowThreads, 0, stream>>>(p);
  return internal::LaunchStatus("token rows launch");
}

absl::Status GatherPages(const PageCopyParams& p, cudaStream_t stream) {
  return Copy(p, /*gather=*/true, stream);
}

absl::Status ScatterPages(const PageCopyParams& p, cudaStream_t stream) {
  return Copy(p, /*gather=*/false, stream);
}

}  // namespace pagoda::kernels::gpu
