// A memory tier (host arena or GPU pool): a flat range of bytes the store carves into slots
// (see SlabAllocator) and copies pages into and out of.
//
// Thread safety: Write/Read of disjoint ranges may run concurrently; the store guarantees that a
// slot is not freed while a copy of it runs.
#ifndef PAGODA_KVSTORE_MEMORY_TIER_H_
#define PAGODA_KVSTORE_MEMORY_TIER_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "pagoda/kvstore/page.h"

namespace pagoda {

class MemoryTier {
 public:
  virtual ~MemoryTier() = default;
  virtual Tier tier() const = 0;
  virtual uint64_t capacity_bytes() const = 0;
  // Start of the tier's bytes when the CPU can address them directly (host), else null (GPU).
  virtual uint8_t* host_base() const = 0;
  // File descriptor that maps the tier's bytes (the host memfd), or -1.
  virtual int fd() const { return -1; }
  // Copies n bytes of host memory at `src` to tier offset `offset`.
  virtual absl::Status Write(uint64_t offset, const void* src, size_t n) = 0;
  // Copies n bytes at tier offset `offset` to host memory at `dst`.
  virtual absl::Status Read(uint64_t offset, void* dst, size_t n) = 0;
};

// The host tier: one memfd of `capacity_bytes`, mapped shared and pre-faulted, so local clients can
// map the same pages (HostArena). Internal on failure of memfd_create / ftruncate / mmap.
absl::StatusOr<std::unique_ptr<MemoryTier>> CreateHostTier(uint64_t capacity_bytes);

// The GPU tier: a cudaMalloc'd pool on `device`. Unavailable when the library was built without
// CUDA or the machine has no such device; Internal for other CUDA errors.
absl::StatusOr<std::unique_ptr<MemoryTier>> CreateGpuTier(uint64_t capacity_bytes, int device);

// Page-locks [base, base + size) for DMA by `device` (cudaHostRegister, portable), so host <-> GPU
// copies of the host arena run at full PCIe speed; the registration lasts until
// UnpinHostMemoryForGpu. Unavailable without CUDA; Internal when the driver refuses (e.g.
// RLIMIT_MEMLOCK).
absl::Status PinHostMemoryForGpu(void* base, uint64_t size, int device);
void UnpinHostMemoryForGpu(void* base);

}  // namespace pagoda

#endif  // PAGODA_KVSTORE_MEMORY_TIER_H_
