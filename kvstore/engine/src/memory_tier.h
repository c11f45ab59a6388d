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
  // Segments of the tier change owner (see SlabAllocator::SegmentHooks): the host tier backs the
  // bytes of [offset, offset + bytes) with the owner's own memfd, so a client that maps its
  // tenant's memfd reaches no other tenant's page. The GPU tier has nothing to do.
  virtual absl::Status AssignSegment(uint64_t offset, uint64_t bytes, uint32_t owner) {
    return absl::OkStatus();
  }
  virtual void ReleaseSegment(uint64_t offset, uint64_t bytes, uint32_t owner) {}
  // The memfd of `owner`'s bytes (created on first use, sealed against shrink and grow; offsets
  // in it are tier offsets), or Unimplemented for a tier without one.
  virtual absl::StatusOr<int> OwnerFd(uint32_t owner) {
    return absl::UnimplementedError("this memory tier has no per-owner file");
  }
  // Page-lock each segment for DMA by `device` while it is assigned (the host tier, when a GPU
  // tier exists). Call before the first allocation. A refusal only costs speed.
  virtual void PinForGpu(int device) {}
  // From now on every assigned segment is page-locked and mapped for `device` at its own address
  // (kernels on the device read it through host pointers): the ones assigned already are pinned
  // now, and a segment that cannot be pinned is not assigned (AssignSegment fails). Idempotent
  // for one device; FailedPrecondition for a second device; Unimplemented for a tier that is not
  // host memory; the pin's error (Unavailable without CUDA) otherwise.
  virtual absl::Status MapForGpu(int device) {
    return absl::UnimplementedError("this memory tier cannot be mapped for a GPU");
  }
  // Copies n bytes of host memory at `src` to tier offset `offset`.
  virtual absl::Status Write(uint64_t offset, const void* src, size_t n) = 0;
  // Copies n bytes at tier offset `offset` to host memory at `dst`.
  virtual absl::Status Read(uint64_t offset, void* dst, size_t n) = 0;
};

// The host tier: `capacity_bytes` of address space whose segments are backed, while assigned, by
// the memfd of the tenant that owns them (one memfd per tenant, each `capacity_bytes` long and
// sparse: only its assigned segments hold memory). Segments are mapped shared and pre-faulted when
// assigned; a released segment's memory is given back (hole punched) and its range unmapped here.
// Internal on failure of mmap.
absl::StatusOr<std::unique_ptr<MemoryTier>> CreateHostTier(uint64_t capacity_bytes);

// The GPU tier: a cudaMalloc'd pool on `device`. Unavailable when the library was built without
// CUDA or the machine has no such device; Internal for other CUDA errors.
absl::StatusOr<std::unique_ptr<MemoryTier>> CreateGpuTier(uint64_t capacity_bytes, int device);

// Page-locks [base, base + size) for DMA by `device` (cudaHostRegister, portable and mapped), so
// host <-> GPU copies of the host arena run at full PCIe speed and kernels on `device` can read it
// at the same addresses; the registration lasts until UnpinHostMemoryForGpu. Unavailable without
// CUDA; Internal when the driver refuses (e.g. RLIMIT_MEMLOCK); Unimplemented (and nothing
// registered) where the device cannot use host pointers to registered memory.
absl::Status PinHostMemoryForGpu(void* base, uint64_t size, int device);
void UnpinHostMemoryForGpu(void* base);
// OK when `device` exists and its kernels can read registered host memory through host pointers;
// Unavailable without CUDA or the device; Unimplemented where it cannot.
absl::Status CheckGpuReadsHostMemory(int device);

}  // namespace pagoda

#endif  // PAGODA_KVSTORE_MEMORY_TIER_H_
