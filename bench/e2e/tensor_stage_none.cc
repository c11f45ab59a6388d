// TensorStage where Pagoda is built without CUDA: host tensors only.
#include "tensor_stage.h"

namespace pagoda::bench {

absl::StatusOr<std::unique_ptr<TensorStage>> MakeCudaTensorStage(int device_index) {
  return absl::UnavailableError("tensor stage: built without CUDA");
}

absl::StatusOr<std::unique_ptr<StepGraph>> MakeStepGraph() {
  return absl::UnavailableError("CUDA graphs: built without CUDA");
}

}  // namespace pagoda::bench
