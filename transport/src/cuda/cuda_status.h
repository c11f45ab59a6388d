// The one place where CUDA errors become absl::Status (transport).
#pragma once

#include <cuda_runtime_api.h>

#include "absl/status/status.h"

namespace pagoda::internal {

absl::Status FromCuda(cudaError_t err, const char* what);

}  // namespace pagoda::internal
