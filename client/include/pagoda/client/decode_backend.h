// The compute side of a decode step: a pool of page slots (the GPU page budget) and the sparse
// decode kernel over it. DecodeSession (decode_session.h) decides which pages sit in which slot;
// a backend only copies bytes into slots and runs attention.
//
// Two backends: the CPU one (the kernels' C++ references; what CI tests) and the CUDA one
// (decode_backend_cuda.cc, built where CMake finds CUDA; a stub answering Unavailable elsewhere):
// a device pool, pinned host staging, one stream, the kernels' sparse decode. Both validate their
// inputs the same way (decode_backend_check.h), so a caller sees the same errors from either.
//
// Thread safety: a backend is not synchronized; one per session.
#ifndef PAGODA_CLIENT_DECODE_BACKEND_H_
#define PAGODA_CLIENT_DECODE_BACKEND_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "pagoda/kernels/params.h"
#include "pagoda/kvstore/page.h"

namespace pagoda {

class DecodeBackend {
 public:
  virtual ~DecodeBackend() = default;

  // Allocates a pool of `slots` page slots in the store's packed page layout (K then V, each
  // [kv_heads, page_tokens, head_dim]). Must be called once, before anything else.
  // InvalidArgument for slots < 1, an invalid layout, q_heads not a multiple of kv_heads, or (CUDA)
  // a shape the GPU kernel does not support (see pagoda/kernels/cuda.h); FailedPrecondition when
  // called twice; ResourceExhausted / Internal when device or pinned memory cannot be had.
  virtual absl::Status Init(const PageLayout& layout, int q_heads, int32_t slots) = 0;

  // A host buffer of at least `bytes` bytes that Upload reads without copying it first (pinned
  // memory on the CUDA backend), or an empty span when the backend has none: the caller then
  // stages in its own memory. Valid until the next StagingBuffer call; the caller fills it and
  // passes (a prefix of) it to Upload.
  virtual absl::StatusOr<absl::Span<uint8_t>> StagingBuffer(size_t bytes) {
    return absl::Span<uint8_t>();
  }

  // One batched copy of pages into slots: page i of `staging` (layout.PageBytes() bytes each,
  // contiguous, host memory; any memory, or StagingBuffer's to skip a copy) goes to slot slots[i].
  // Slots must not repeat. InvalidArgument for a size mismatch, a repeated or out-of-range slot;
  // nothing is written then. Returns once the pages are in the pool (the CUDA backend
  // synchronizes its stream), so the caller may reuse `staging` and a failed copy is reported here.
  virtual absl::Status Upload(absl::Span<const int32_t> slots,
                              absl::Span<const uint8_t> staging) = 0;

  // Sparse decode of one query token: q [q_heads, head_dim] (host, layout dtype bits) over the
  // tokens the table lists (one row per KV head, page ids are slot ids; host arrays), output o
  // [q_heads, head_dim] (host). InvalidArgument / OutOfRange for bad sizes or a bad table (checked
  // on the host by both backends); o is untouched then.
  virtual absl::Status Attend(absl::Span<const uint16_t> q, const kernels::PageTable& table,
                              absl::Span<uint16_t> o) = 0;

  virtual const char* name() const = 0;
};

// The CPU backend: a host pool, GatherPages/ScatterPagesReference copies and
// SparseDecodeReference attention.
std::unique_ptr<DecodeBackend> MakeCpuDecodeBackend();

struct CudaDecodeBackendOptions {
  int device = 0;
  // How Upload moves the staged pages. false: one host-to-device copy of the pinned staging buffer
  // (copy engine), then one scatter kernel into the slots. true: one scatter kernel reading the
  // pinned staging buffer in place over PCIe (mapped host memory): one operation instead of two,
  // which pays off for the small uploads of a decode step.
  bool mapped_upload = false;
};

// The CUDA backend on `device`: a cudaMalloc'd pool, pinned host staging (grown as needed), one
// stream it owns, the kernels' ScatterPages and SparseDecode (fp16/bf16, head_dim 64 or 128, up to
// 8 query heads per KV head, power-of-two pages). Unavailable when Pagoda was built without CUDA,
// no CUDA device or driver is present, or `device` does not exist.
absl::StatusOr<std::unique_ptr<DecodeBackend>> MakeCudaDecodeBackend(int device = 0);
absl::StatusOr<std::unique_ptr<DecodeBackend>> MakeCudaDecodeBackend(
    const CudaDecodeBackendOptions& options);

// kernels::DType of a store dtype.
inline kernels::DType KernelDType(DType dtype) {
  return dtype == DType::kBf16 ? kernels::DType::kBFloat16 : kernels::DType::kFloat16;
}

}  // namespace pagoda

#endif  // PAGODA_CLIENT_DECODE_BACKEND_H_
