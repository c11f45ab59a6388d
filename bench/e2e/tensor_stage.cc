#include "tensor_stage.h"

#include <cstring>

namespace pagoda::bench {
namespace {

class HostStage final : public TensorStage {
 public:
  absl::StatusOr<TensorView> In(int slot, const uint16_t* host, DType dtype, int64_t a, int64_t b,
                                int64_t c) override {
    return TensorView::Contiguous(const_cast<uint16_t*>(host), dtype, {a, b, c});
  }
  absl::StatusOr<TensorView> Out(int slot, uint16_t* host, DType dtype, int64_t a, int64_t b,
                                 int64_t c) override {
    return TensorView::Contiguous(host, dtype, {a, b, c});
  }
  absl::Status Back(const TensorView& view, uint16_t* host) override {
    if (view.data != host) {
      std::memcpy(host, view.data, view.shape[0] * view.shape[1] * view.shape[2] * 2);
    }
    return absl::OkStatus();
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<TensorStage>> MakeCudaTensorStage(int device_index);

absl::StatusOr<std::unique_ptr<WorkerBackend>> MakeWorkerBackend(const std::string& name,
                                                                 void* stream) {
  if (name == "cpu") return MakeCpuWorkerBackend();
  if (name == "cuda") return MakeCudaWorkerBackend({0, stream});
  return absl::InvalidArgumentError("backend must be cpu or cuda, not " + name);
}

absl::StatusOr<std::unique_ptr<TensorStage>> MakeTensorStage(Device device, int device_index) {
  if (device == Device::kCpu) return std::make_unique<HostStage>();
  return MakeCudaTensorStage(device_index);
}

}  // namespace pagoda::bench
