// GPU tier factory of a build without CUDA: the tier is simply absent.
#include "memory_tier.h"

namespace pagoda {

absl::StatusOr<std::unique_ptr<MemoryTier>> CreateGpuTier(uint64_t capacity_bytes, int device) {
  return absl::UnavailableError("GPU tier: Pagoda was built without CUDA");
}

absl::Status PinHostMemoryForGpu(void* base, uint64_t size, int device) {
  return absl::UnavailableError("GPU tier: Pagoda was built without CUDA");
}

void UnpinHostMemoryForGpu(void* base) {}

absl::Status CheckGpuReadsHostMemory(int device) {
  return absl::UnavailableError("GPU tier: Pagoda was built without CUDA");
}

}  // namespace pagoda
