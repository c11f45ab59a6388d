#include "pagoda/transport/gpu_copy.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "transport/src/cuda/cuda_status.h"

namespace pagoda {
namespace {

absl::Status Validate(absl::Span<const PageCopy> copies, size_t page_bytes) {
  if (copies.empty()) return absl::InvalidArgumentError("CopyPages: empty batch");
  if (page_bytes == 0) return absl::InvalidArgumentError("CopyPages: page_bytes is 0");
  for (size_t i = 0; i < copies.size(); ++i) {
    if (copies[i].dst == nullptr || copies[i].src == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("CopyPages: copy ", i, " has a null pointer"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CopyPagesAsync(absl::Span<const PageCopy> copies, size_t page_bytes,
                            cudaStream_t stream) {
  if (absl::Status s = Validate(copies, page_bytes); !s.ok()) return s;
  if (stream == nullptr || stream == cudaStreamLegacy) {
    return absl::InvalidArgumentError(
        "CopyPagesAsync: batched copies cannot use the legacy default stream");
  }
  // Merge runs adjacent on both sides: fewer, larger DMAs.
  std::vector<void*> dsts;
  std::vector<const void*> srcs;
  std::vector<size_t> sizes;
  dsts.reserve(copies.size());
  srcs.reserve(copies.size());
  sizes.reserve(copies.size());
  for (const PageCopy& c : copies) {
    if (!sizes.empty() && static_cast<char*>(dsts.back()) + sizes.back() == c.dst &&
        static_cast<const char*>(srcs.back()) + sizes.back() == c.src) {
      sizes.back() += page_bytes;
      continue;
    }
    dsts.push_back(c.dst);
    srcs.push_back(c.src);
    sizes.push_back(page_bytes);
  }
  cudaMemcpyAttributes attr{};
  attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;  // sources are ready in stream order
  attr.flags = cudaMemcpyFlagPreferOverlapWithCompute;
  size_t attr_idx = 0;
  cudaError_t err = cudaMemcpyBatchAsync(dsts.data(), const_cast<const void**>(srcs.data()),
                                         sizes.data(), sizes.size(), &attr, &attr_idx, 1, stream);
  if (err == cudaErrorNotSupported) {
    (void)cudaGetLastError();
    return CopyPagesOneByOne(copies, page_bytes, stream);  // old driver: slow but correct
  }
  return internal::FromCuda(err, "cudaMemcpyBatchAsync");
}

absl::Status CopyPagesOneByOne(absl::Span<const PageCopy> copies, size_t page_bytes,
                               cudaStream_t stream) {
  if (absl::Status s = Validate(copies, page_bytes); !s.ok()) return s;
  for (const PageCopy& c : copies) {
    cudaError_t err = cudaMemcpyAsync(c.dst, c.src, page_bytes, cudaMemcpyDefault, stream);
    if (err != cudaSuccess) return internal::FromCuda(err, "cudaMemcpyAsync");
  }
  return absl::OkStatus();
}

}  // namespace pagoda
