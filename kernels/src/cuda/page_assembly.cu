// Prefill page assembly (PageAssemblyParams): one block per (page, KV head). Each thread reads
// 16-byte words of the head's K and V token rows (device memory), writes them where the store's
// page layout puts them (the pinned, mapped host arena: writes cross PCIe) unless the page is
// checksum-only, and adds the checksum terms of the 8-byte words; a block reduction writes the
// head's checksum.
#include "common.cuh"
#include "pagoda/kernels/cuda.h"
#include "pagoda/kernels/head_checksum.h"
#include "validate.h"

namespace pagoda::kernels::gpu {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    PageAssemblyKernel(const __grid_constant__ PageAssemblyParams p) {
  const int i = blockIdx.x, h = blockIdx.y;
  const int64_t row_words = int64_t{p.head_dim} * 2 / 16;  // 16-byte words per token row
  const int64_t half_words = p.page_size * row_words;      // per K (or V) of the head-page
  const int64_t half_bytes = half_words * 16;
  const int64_t off = p.dst_offset[i];
  uint8_t* const page = off >= 0 ? p.dst + off : nullptr;
  uint64_t sum = 0;
  for (int64_t w = threadIdx.x; w < 2 * half_words; w += kThreads) {
    const bool is_v = w >= half_words;
    const int64_t in_half = is_v ? w - half_words : w;
    const int64_t token = int64_t{i} * p.page_size + in_half / row_words;
    const int64_t part = in_half % row_words;
    const uint16_t* src = is_v ? p.v + token * p.v_stride_token + h * p.v_stride_head
                               : p.k + token * p.k_stride_token + h * p.k_stride_head;
    const uint4 x = *reinterpret_cast<const uint4*>(src + part * 8);
    if (page != nullptr) {
      uint8_t* d = page + (is_v ? int64_t{p.num_kv_heads} + h : int64_t{h}) * half_bytes;
      *reinterpret_cast<uint4*>(d + in_half * 16) = x;
    }
    sum += internal::ChecksumTerms16(x, w);  // index across the head-page: K words, then V
  }
  const uint64_t total = internal::BlockSum<kThreads>(sum);
  if (threadIdx.x == 0) p.head_sums[int64_t{i} * p.num_kv_heads + h] = total;
}

}  // namespace

absl::Status AssemblePages(const PageAssemblyParams& p, cudaStream_t stream) {
  if (auto s = kernels::internal::ValidatePageAssemblyShape(p); !s.ok()) return s;
  if (p.num_pages == 0) return absl::OkStatus();
  if (((reinterpret_cast<uintptr_t>(p.k) | reinterpret_cast<uintptr_t>(p.v) |
        reinterpret_cast<uintptr_t>(p.dst)) &
       15u) != 0 ||
      p.k_stride_token % 8 != 0 || p.k_stride_head % 8 != 0 || p.v_stride_token % 8 != 0 ||
      p.v_stride_head % 8 != 0 || (p.head_dim * 2) % 16 != 0) {
    return absl::InvalidArgumentError(
        "gpu page assembly: k, v, dst 16-byte aligned, strides multiples of 8 elements and "
        "head_dim a multiple of 8 are needed");
  }
  PageAssemblyKernel<<<dim3(p.num_pages, p.num_kv_heads), kThreads, 0, stream>>>(p);
  return internal::LaunchStatus("page assembly launch");
}

}  // namespace pagoda::kernels::gpu
