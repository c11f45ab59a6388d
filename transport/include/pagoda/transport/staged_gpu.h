// GPU memory over the network where the network library cannot reach GPU memory (Debian's UCX
// has no CUDA support): pages move through pinned host bounce buffers registered with the
// transport, pipelined so the network transfer of one chunk overlaps the PCIe copy of the previous
// one. Built with CUDA (library pagoda_transport_staged; needs UCX too).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "pagoda/transport/transport.h"

namespace pagoda {

struct StagedGpuOptions {
  // Bytes per bounce buffer; one network batch and one PCIe copy each. Larger: fewer, longer
  // batches; smaller: earlier overlap. Rounded down to whole pages (at least one).
  size_t chunk_bytes = 8 << 20;
  // Bounce buffers in flight (2 = double buffering).
  int depth = 2;
};

// Not safe for concurrent use: one Read or Write at a time per instance (it owns the bounce
// buffers); create one per thread.
class StagedGpuCopier {
 public:
  // Allocates `depth` pinned bounce buffers of chunk_bytes and registers them with `transport`,
  // which must outlive the copier.
  static absl::StatusOr<std::unique_ptr<StagedGpuCopier>> Create(Transport* transport,
                                                                 const StagedGpuOptions& options);
  ~StagedGpuCopier();

  // Reads remote pages (remote_offsets[i] within `remote`, page_bytes each) into GPU memory
  // (gpu_pages[i], device pointers of the stream's device). Returns once every page is on the GPU,
  // or the first error (InvalidArgument for mismatched spans / empty batch / page_bytes larger
  // than a bounce buffer, before anything moves; a transfer or CUDA error otherwise, after
  // draining what was in flight: the destination pages then hold unspecified bytes).
  absl::Status Read(TransportEndpoint& endpoint, const RemoteMemory& remote,
                    absl::Span<const uint64_t> remote_offsets, absl::Span<void* const> gpu_pages,
                    size_t page_bytes, cudaStream_t stream);

  // Writes GPU pages (gpu_pages[i]) to remote memory (remote_offsets[i]) the same way. OK means
  // every byte is in remote memory (flushed).
  absl::Status Write(TransportEndpoint& endpoint, const RemoteMemory& remote,
                     absl::Span<const uint64_t> remote_offsets,
                     absl::Span<const void* const> gpu_pages, size_t page_bytes,
                     cudaStream_t stream);

 private:
  struct Slot {
    uint8_t* host = nullptr;
    std::unique_ptr<RegisteredMemory> reg;
    cudaEvent_t copied = nullptr;  // the slot's last PCIe copy
  };
  explicit StagedGpuCopier(size_t chunk_bytes) : chunk_bytes_(chunk_bytes) {}
  absl::Status Check(size_t n_offsets, size_t n_pages, size_t page_bytes,
                     cudaStream_t stream) const;

  size_t chunk_bytes_;
  std::vector<Slot> slots_;
};

}  // namespace pagoda
