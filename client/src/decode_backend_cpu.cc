// The CPU decode backend: a host page pool and the kernels' C++ references.
#include <vector>

#include "decode_backend_check.h"
#include "pagoda/client/decode_backend.h"
#include "pagoda/kernels/reference.h"

namespace pagoda {
namespace {

class CpuDecodeBackend final : public DecodeBackend {
 public:
  absl::Status Init(const PageLayout& layout, int q_heads, int32_t slots) override {
    if (!pool_.empty()) return absl::FailedPreconditionError("backend already initialized");
    if (absl::Status s = decode_internal::CheckInit(layout, q_heads, slots); !s.ok()) return s;
    layout_ = layout;
    q_heads_ = q_heads;
    slots_ = slots;
    pool_.assign(static_cast<size_t>(slots) * layout.PageBytes() / 2, 0);
    return absl::OkStatus();
  }

  absl::Status Upload(absl::Span<const int32_t> slots, absl::Span<const uint8_t> staging) override {
    if (pool_.empty()) return absl::FailedPreconditionError("backend not initialized");
    const uint64_t page_bytes = layout_.PageBytes();
    if (absl::Status s =
            decode_internal::CheckUpload(slots, staging.size(), page_bytes, slots_, &seen_);
        !s.ok()) {
      return s;
    }
    if (slots.empty()) return absl::OkStatus();
    kernels::PageCopyParams p;
    p.pool = reinterpret_cast<uint8_t*>(pool_.data());
    p.pool_pages = slots_;
    p.pool_stride_bytes = static_cast<int64_t>(page_bytes);
    p.page_bytes = static_cast<int64_t>(page_bytes);
    p.pages = slots.data();
    p.num_pages = static_cast<int32_t>(slots.size());
    p.staging = const_cast<uint8_t*>(staging.data());  // scatter only reads staging
    return kernels::ScatterPagesReference(p);
  }

  absl::Status Attend(absl::Span<const uint16_t> q, const kernels::PageTable& table,
                      absl::Span<uint16_t> o) override {
    if (pool_.empty()) return absl::FailedPreconditionError("backend not initialized");
    int64_t max_row_tokens = 0;
    if (absl::Status s = decode_internal::CheckAttend(layout_, q_heads_, slots_, q.size(), o.size(),
                                                      table, &max_row_tokens);
        !s.ok()) {
      return s;
    }
    kernels::DecodeParams p;
    p.kv = kernels::PackedPagedKV(KernelDType(layout_.dtype), slots_,
                                  static_cast<int32_t>(layout_.page_tokens),
                                  static_cast<int32_t>(layout_.kv_heads),
                                  static_cast<int32_t>(layout_.head_dim), pool_.data());
    p.table = table;
    p.batch = 1;
    p.num_qo_heads = q_heads_;
    p.per_kv_head = true;
    p.q = q.data();
    p.o = o.data();
    return kernels::SparseDecodeReference(p);
  }

  const char* name() const override { return "cpu"; }

 private:
  PageLayout layout_;
  int q_heads_ = 0;
  int32_t slots_ = 0;
  std::vector<uint16_t> pool_;
  std::vector<uint8_t> seen_;  // CheckUpload scratch
};

}  // namespace

std::unique_ptr<DecodeBackend> MakeCpuDecodeBackend() {
  return std::make_unique<CpuDecodeBackend>();
}

}  // namespace pagoda
