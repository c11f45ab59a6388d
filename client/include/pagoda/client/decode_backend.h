// The compute side of a decode step: a pool of page slots (the GPU page budget) and the sparse
// decode kernel over it. DecodeSession (decode_session.h) decides which pages sit in which slot;
// a backend only copies bytes into slots and runs attention.
//
// Two backends: the CPU one (the kernels' C++ references; what CI tests) and the CUDA one
// (decode_backend_cuda.cc, built only where CUDA is; not part of this commit, see README).
//
// Thread safety: a backend is not synchronized; one per session.
#ifndef PAGODA_CLIENT_DECODE_BACKEND_H_
#define PAGODA_CLIENT_DECODE_BACKEND_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "pagoda/kernels/params.h"
#include "pagoda/kvstore/page.h"

namespace pagoda {

class DecodeBackend {
 public:
  virtual ~DecodeBackend() = default;

  // Allocates a pool of `slots` page slots in the store's packed page layout (K then V, each
  // [kv_heads, page_tokens, head_dim]). Must be called once, before anything else.
  // InvalidArgument for slots < 1, an invalid layout, or q_heads not a multiple of kv_heads.
  virtual absl::Status Init(const PageLayout& layout, int q_heads, int32_t slots) = 0;

  // One batched copy of pages into slots: page i of `staging` (layout.PageBytes() bytes each,
  // contiguous, host memory) goes to slot slots[i]. Slots must not repeat. InvalidArgument for a
  // size mismatch, a repeated or out-of-range slot; nothing is written then.
  virtual absl::Status Upload(absl::Span<const int32_t> slots,
                              absl::Span<const uint8_t> staging) = 0;

  // Sparse decode of one query token: q [q_heads, head_dim] (host, layout dtype bits) over the
  // tokens the table lists (one row per KV head, page ids are slot ids; host arrays), output o
  // [q_heads, head_dim] (host). Errors from the kernel's validation leave o untouched.
  virtual absl::Status Attend(absl::Span<const uint16_t> q, const kernels::PageTable& table,
                              absl::Span<uint16_t> o) = 0;

  virtual const char* name() const = 0;
};

// The CPU backend: a host pool, GatherPages/ScatterPagesReference copies and
// SparseDecodeReference attention.
std::unique_ptr<DecodeBackend> MakeCpuDecodeBackend();

// kernels::DType of a store dtype.
inline kernels::DType KernelDType(DType dtype) {
  return dtype == DType::kBf16 ? kernels::DType::kBFloat16 : kernels::DType::kFloat16;
}

}  // namespace pagoda

#endif  // PAGODA_CLIENT_DECODE_BACKEND_H_
