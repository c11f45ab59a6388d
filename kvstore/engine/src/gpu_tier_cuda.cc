// GPU tier: one cudaMalloc'd pool per store, copied to and from host memory with cudaMemcpy.
// Compiled only when CMake found CUDA (PAGODA_HAVE_CUDA); uses the runtime API only.
#include <cuda_runtime_api.h>

#include "absl/strings/str_format.h"
#include "memory_tier.h"

namespace pagoda {
namespace {

// The one place CUDA errors become absl::Status.
absl::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  if (err == cudaErrorNoDevice || err == cudaErrorInvalidDevice ||
      err == cudaErrorInsufficientDriver) {
    return absl::UnavailableError(
        absl::StrFormat("GPU tier: %s: %s", what, cudaGetErrorString(err)));
  }
  return absl::InternalError(absl::StrFormat("GPU tier: %s: %s", what, cudaGetErrorString(err)));
}

class GpuTier final : public MemoryTier {
 public:
  GpuTier(int device, uint8_t* base, uint64_t capacity)
      : device_(device), base_(base), capacity_(capacity) {}
  ~GpuTier() override {
    cudaSetDevice(device_);
    cudaFree(base_);
  }
  Tier tier() const override { return Tier::kGpu; }
  uint64_t capacity_bytes() const override { return capacity_; }
  uint8_t* host_base() const override { return nullptr; }
  absl::Status Write(uint64_t offset, const void* src, size_t n) override {
    if (absl::Status s = CudaStatus(cudaSetDevice(device_), "cudaSetDevice"); !s.ok()) return s;
    return CudaStatus(cudaMemcpy(base_ + offset, src, n, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
  }
  absl::Status Read(uint64_t offset, void* dst, size_t n) override {
    if (absl::Status s = CudaStatus(cudaSetDevice(device_), "cudaSetDevice"); !s.ok()) return s;
    return CudaStatus(cudaMemcpy(dst, base_ + offset, n, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
  }

 private:
  int device_;
  uint8_t* base_;
  uint64_t capacity_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<MemoryTier>> CreateGpuTier(uint64_t capacity_bytes, int device) {
  if (capacity_bytes == 0) return absl::InvalidArgumentError("GPU tier: capacity is 0");
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    return absl::UnavailableError("GPU tier: no CUDA device on this machine");
  }
  if (device < 0 || device >= count) {
    return absl::UnavailableError(
        absl::StrFormat("GPU tier: device %d does not exist (%d devices)", device, count));
  }
  if (absl::Status s = CudaStatus(cudaSetDevice(device), "cudaSetDevice"); !s.ok()) return s;
  void* p = nullptr;
  if (absl::Status s = CudaStatus(cudaMalloc(&p, capacity_bytes), "cudaMalloc"); !s.ok()) return s;
  return std::make_unique<GpuTier>(device, static_cast<uint8_t*>(p), capacity_bytes);
}

absl::Status PinHostMemoryForGpu(void* base, uint64_t size, int device) {
  if (absl::Status s = CudaStatus(cudaSetDevice(device), "cudaSetDevice"); !s.ok()) return s;
  if (absl::Status s = CudaStatus(
          cudaHostRegister(base, size, cudaHostRegisterPortable | cudaHostRegisterMapped),
          "cudaHostRegister");
      !s.ok()) {
    return s;
  }
  void* dev = nullptr;
  if (cudaHostGetDevicePointer(&dev, base, 0) != cudaSuccess || dev != base) {
    cudaGetLastError();
    cudaHostUnregister(base);
    return absl::UnimplementedError(
        "host tier: this device cannot read registered host memory at its host address");
  }
  return absl::OkStatus();
}

void UnpinHostMemoryForGpu(void* base) { cudaHostUnregister(base); }

absl::Status CheckGpuReadsHostMemory(int device) {
  if (absl::Status s = CudaStatus(cudaSetDevice(device), "cudaSetDevice"); !s.ok()) return s;
  int can = 0;
  if (absl::Status s = CudaStatus(
          cudaDeviceGetAttribute(&can, cudaDevAttrCanUseHostPointerForRegisteredMem, device),
          "cudaDeviceGetAttribute");
      !s.ok()) {
    return s;
  }
  if (can == 0) {
    return absl::UnimplementedError(absl::StrFormat(
        "host tier: GPU %d cannot read registered host memory at its host address", device));
  }
  return absl::OkStatus();
}

}  // namespace pagoda
