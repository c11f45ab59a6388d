// The CPU decode backend: a host page pool and the kernels' C++ references.
#include <vector>

#include "absl/strings/str_cat.h"
#include "pagoda/client/decode_backend.h"
#include "pagoda/kernels/reference.h"

namespace pagoda {
namespace {

class CpuDecodeBackend final : public DecodeBackend {
 public:
  absl::Status Init(const PageLayout& layout, int q_heads, int32_t slots) override {
    if (!pool_.empty()) return absl::FailedPreconditionError("backend already initialized");
    if (absl::Status s = layout.Validate(); !s.ok()) return s;
    if (slots < 1) return absl::InvalidArgumentError("pool slots must be >= 1");
    if (q_heads < 1 || q_heads % static_cast<int>(layout.kv_heads) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("q_heads ", q_heads, " is not a multiple of kv_heads ", layout.kv_heads));
    }
    layout_ = layout;
    q_heads_ = q_heads;
    slots_ = slots;
    pool_.assign(static_cast<size_t>(slots) * layout.PageBytes() / 2, 0);
    return absl::OkStatus();
  }

  absl::Status Upload(absl::Span<const int32_t> slots, absl::Span<const uint8_t> staging) override {
    if (pool_.empty()) return absl::FailedPreconditionError("backend not initialized");
    const uint64_t page_bytes = layout_.PageBytes();
    if (staging.size() != slots.size() * page_bytes) {
      return absl::InvalidArgumentError(absl::StrCat("staging holds ", staging.size(),
                                                     " bytes, expected ", slots.size(), " pages"));
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
    const size_t n = static_cast<size_t>(q_heads_) * layout_.head_dim;
    if (q.size() != n || o.size() != n) {
      return absl::InvalidArgumentError(absl::StrCat("q / o must hold ", n, " elements"));
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
};

}  // namespace

std::unique_ptr<DecodeBackend> MakeCpuDecodeBackend() {
  return std::make_unique<CpuDecodeBackend>();
}

}  // namespace pagoda
