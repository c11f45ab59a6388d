// Built where Pagoda has no CUDA: the CUDA worker backend is unavailable.
#include "pagoda/client/worker_backend.h"

namespace pagoda {

absl::StatusOr<std::unique_ptr<WorkerBackend>> MakeCudaWorkerBackend(
    const CudaWorkerBackendOptions&) {
  return absl::UnavailableError("Pagoda was built without CUDA");
}

}  // namespace pagoda
