// The CUDA decode backend's factory in a build without CUDA: the backend is simply absent.
#include "pagoda/client/decode_backend.h"

namespace pagoda {

absl::StatusOr<std::unique_ptr<DecodeBackend>> MakeCudaDecodeBackend(
    const CudaDecodeBackendOptions& options) {
  return absl::UnavailableError("CUDA decode backend: Pagoda was built without CUDA");
}

absl::StatusOr<std::unique_ptr<DecodeBackend>> MakeCudaDecodeBackend(int device) {
  return MakeCudaDecodeBackend(CudaDecodeBackendOptions{device});
}

}  // namespace pagoda
