// Internal: the one place CUDA runtime errors become absl::Status in the client's CUDA backends
// (the worker's and DiffusionSession's). `who` names the backend in the message.
#ifndef PAGODA_CLIENT_WORKER_CUDA_STATUS_H_
#define PAGODA_CLIENT_WORKER_CUDA_STATUS_H_

#include <cuda_runtime_api.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace pagoda::cuda_internal {

inline absl::Status CudaStatus(cudaError_t err, const char* who, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  const std::string msg = absl::StrCat(who, ": ", what, ": ", cudaGetErrorString(err));
  if (err == cudaErrorNoDevice || err == cudaErrorInvalidDevice ||
      err == cudaErrorInsufficientDriver) {
    return absl::UnavailableError(msg);
  }
  if (err == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

}  // namespace pagoda::cuda_internal

#endif  // PAGODA_CLIENT_WORKER_CUDA_STATUS_H_
