// GPU memory shared between processes of one node (CUDA IPC) and peer access between GPUs.
// Built only with CUDA (library pagoda_transport_cuda).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace pagoda {

// Bytes that let another process of this node map [device_ptr, device_ptr + length), which must
// lie inside one cudaMalloc allocation. Framed with a magic and checksum like remote keys.
// InvalidArgument for null / empty / host pointers; the CUDA error otherwise.
absl::StatusOr<std::string> ExportCudaIpc(const void* device_ptr, size_t length);

// Another process's GPU memory mapped into this one (on the current device). Unmapped when
// destroyed. Immutable; safe for concurrent use.
class CudaIpcMapping {
 public:
  // Opens a handle from ExportCudaIpc. InvalidArgument for damaged bytes; FailedPrecondition when
  // opened in the exporting process itself (CUDA forbids it: use the pointer directly).
  static absl::StatusOr<std::unique_ptr<CudaIpcMapping>> Open(std::string_view handle);
  ~CudaIpcMapping();
  CudaIpcMapping(const CudaIpcMapping&) = delete;
  CudaIpcMapping& operator=(const CudaIpcMapping&) = delete;

  void* data() const { return data_; }  // the exported range's first byte
  size_t length() const { return length_; }
  int source_device() const { return source_device_; }

 private:
  CudaIpcMapping(void* base, void* data, size_t length, int source_device)
      : base_(base), data_(data), length_(length), source_device_(source_device) {}
  void* base_;
  void* data_;
  size_t length_;
  int source_device_;
};

// Lets kernels and copies on `device` reach memory of `peer` directly (NVLink / PCIe P2P).
// Idempotent. FailedPrecondition when the pair cannot do P2P (copies still work, staged by the
// driver); OK when device == peer.
absl::Status EnablePeerAccess(int device, int peer);

}  // namespace pagoda
