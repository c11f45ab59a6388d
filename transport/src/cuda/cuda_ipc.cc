#include "pagoda/transport/cuda_ipc.h"

#include <cuda.h>
#include <cuda_runtime_api.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "transport/src/cuda/cuda_status.h"
#include "transport/src/cuda/ipc_frame.h"

namespace pagoda {
namespace {

constexpr char kMagic[5] = "PGIP";

struct Payload {
  cudaIpcMemHandle_t handle;
  uint64_t offset;  // of the exported range within the allocation
  uint64_t length;
  int32_t device;
  uint32_t pid;
};

}  // namespace

absl::StatusOr<std::string> ExportCudaIpc(const void* device_ptr, size_t length) {
  if (device_ptr == nullptr || length == 0) {
    return absl::InvalidArgumentError("ExportCudaIpc: null pointer or empty range");
  }
  cudaPointerAttributes attr{};
  cudaError_t err = cudaPointerGetAttributes(&attr, device_ptr);
  if (err != cudaSuccess || attr.type != cudaMemoryTypeDevice) {
    (void)cudaGetLastError();
    return absl::InvalidArgumentError("ExportCudaIpc: not device memory");
  }
  CUdeviceptr base = 0;
  size_t size = 0;
  if (cuMemGetAddressRange(&base, &size, reinterpret_cast<CUdeviceptr>(device_ptr)) !=
      CUDA_SUCCESS) {
    return absl::InvalidArgumentError("ExportCudaIpc: pointer is not in a cudaMalloc allocation");
  }
  uint64_t offset = reinterpret_cast<uintptr_t>(device_ptr) - base;
  if (offset + length > size) {
    return absl::InvalidArgumentError(
        absl::StrCat("ExportCudaIpc: range of ", length, " bytes runs past its allocation"));
  }
  Payload p{};
  err = cudaIpcGetMemHandle(&p.handle, reinterpret_cast<void*>(base));
  if (err != cudaSuccess) return internal::FromCuda(err, "cudaIpcGetMemHandle");
  p.offset = offset;
  p.length = length;
  p.device = attr.device;
  p.pid = static_cast<uint32_t>(getpid());
  return internal::SealFrame(kMagic,
                             std::string_view(reinterpret_cast<const char*>(&p), sizeof(p)));
}

absl::StatusOr<std::unique_ptr<CudaIpcMapping>> CudaIpcMapping::Open(std::string_view handle) {
  auto payload = internal::OpenFrame(kMagic, handle);
  if (!payload || payload->size() != sizeof(Payload)) {
    return absl::InvalidArgumentError("CUDA IPC handle: damaged or not a Pagoda IPC handle");
  }
  Payload p;
  std::memcpy(&p, payload->data(), sizeof(p));
  if (p.pid == static_cast<uint32_t>(getpid())) {
    return absl::FailedPreconditionError(
        "CUDA IPC handle opened in the process that exported it; use the pointer directly");
  }
  void* base = nullptr;
  cudaError_t err = cudaIpcOpenMemHandle(&base, p.handle, cudaIpcMemLazyEnablePeerAccess);
  if (err != cudaSuccess) return internal::FromCuda(err, "cudaIpcOpenMemHandle");
  return std::unique_ptr<CudaIpcMapping>(
      new CudaIpcMapping(base, static_cast<char*>(base) + p.offset, p.length, p.device));
}

CudaIpcMapping::~CudaIpcMapping() { (void)cudaIpcCloseMemHandle(base_); }

absl::Status EnablePeerAccess(int device, int peer) {
  if (device == peer) return absl::OkStatus();
  int can = 0;
  cudaError_t err = cudaDeviceCanAccessPeer(&can, device, peer);
  if (err != cudaSuccess) return internal::FromCuda(err, "cudaDeviceCanAccessPeer");
  if (!can) {
    return absl::FailedPreconditionError(
        absl::StrCat("GPU ", device, " cannot access GPU ", peer, " directly"));
  }
  int current = 0;
  if ((err = cudaGetDevice(&current)) != cudaSuccess) {
    return internal::FromCuda(err, "cudaGetDevice");
  }
  if ((err = cudaSetDevice(device)) != cudaSuccess) {
    return internal::FromCuda(err, "cudaSetDevice");
  }
  err = cudaDeviceEnablePeerAccess(peer, 0);
  if (err == cudaErrorPeerAccessAlreadyEnabled) {
    (void)cudaGetLastError();
    err = cudaSuccess;
  }
  (void)cudaSetDevice(current);
  return internal::FromCuda(err, "cudaDeviceEnablePeerAccess");
}

}  // namespace pagoda
