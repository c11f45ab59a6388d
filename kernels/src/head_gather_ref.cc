// CPU reference of the verified head-page gather (HeadGatherParams).
#include <cstring>

#include "pagoda/kernels/head_checksum.h"
#include "pagoda/kernels/reference.h"
#include "validate.h"

namespace pagoda::kernels {

absl::Status ValidateHeadGather(const HeadGatherParams& p) {
  if (auto s = internal::ValidateHeadGatherShape(p); !s.ok()) return s;
  return internal::ValidateHeadGatherHost(p);
}

absl::Status GatherHeadPagesReference(const HeadGatherParams& p) {
  if (auto s = ValidateHeadGather(p); !s.ok()) return s;
  const int64_t slot_bytes = 2 * p.half_bytes;
  for (int32_t i = 0; i < p.num_copies; ++i) {
    uint8_t* slot = p.pool + (int64_t{p.dst_head[i]} * p.pool_slots + p.dst_slot[i]) * slot_bytes;
    std::memcpy(slot, p.src + p.src_k[i], static_cast<size_t>(p.half_bytes));
    std::memcpy(slot + p.half_bytes, p.src + p.src_v[i], static_cast<size_t>(p.half_bytes));
    // Verify what landed in the slot, not the source: a source rewritten mid-copy is caught too.
    p.bad[i] = HeadPageChecksum(slot, slot + p.half_bytes, p.half_bytes) == p.expected[i] ? 0 : 1;
  }
  return absl::OkStatus();
}

}  // namespace pagoda::kernels
