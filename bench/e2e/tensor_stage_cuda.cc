// TensorStage on a CUDA device (built where Pagoda builds its CUDA kernels).
#include <cuda_runtime_api.h>

#include <map>

#include "absl/strings/str_cat.h"
#include "tensor_stage.h"

namespace pagoda::bench {
namespace {

absl::Status Cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("tensor stage: ", what, ": ", cudaGetErrorString(e)));
}

class CudaStage final : public TensorStage {
 public:
  explicit CudaStage(int device) : device_(device) {}
  ~CudaStage() override {
    for (auto& [slot, buf] : bufs_) cudaFree(buf.ptr);
  }
  absl::StatusOr<TensorView> In(int slot, const uint16_t* host, DType dtype, int64_t a, int64_t b,
                                int64_t c) override {
    auto p = Buffer(slot, a * b * c * 2);
    if (!p.ok()) return p.status();
    if (absl::Status s = Cuda(cudaMemcpy(*p, host, a * b * c * 2, cudaMemcpyHostToDevice), "H2D");
        !s.ok()) {
      return s;
    }
    return TensorView::Contiguous(*p, dtype, {a, b, c}, Device::kCuda, device_);
  }
  absl::StatusOr<TensorView> Out(int slot, uint16_t* host, DType dtype, int64_t a, int64_t b,
                                 int64_t c) override {
    auto p = Buffer(slot, a * b * c * 2);
    if (!p.ok()) return p.status();
    return TensorView::Contiguous(*p, dtype, {a, b, c}, Device::kCuda, device_);
  }
  absl::Status Back(const TensorView& view, uint16_t* host) override {
    return Cuda(cudaMemcpy(host, view.data, view.shape[0] * view.shape[1] * view.shape[2] * 2,
                           cudaMemcpyDeviceToHost),
                "D2H");
  }

 private:
  struct Buf {
    void* ptr = nullptr;
    int64_t bytes = 0;
  };
  absl::StatusOr<void*> Buffer(int slot, int64_t bytes) {
    if (absl::Status s = Cuda(cudaSetDevice(device_), "cudaSetDevice"); !s.ok()) return s;
    Buf& b = bufs_[slot];
    if (b.bytes < bytes) {
      if (b.ptr != nullptr) cudaFree(b.ptr);
      b = Buf{};
      if (absl::Status s = Cuda(cudaMalloc(&b.ptr, bytes), "cudaMalloc"); !s.ok()) return s;
      b.bytes = bytes;
    }
    return b.ptr;
  }
  const int device_;
  std::map<int, Buf> bufs_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<TensorStage>> MakeCudaTensorStage(int device_index) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || device_index < 0 || device_index >= n) {
    cudaGetLastError();
    return absl::UnavailableError(absl::StrCat("tensor stage: no CUDA device ", device_index));
  }
  return std::make_unique<CudaStage>(device_index);
}

namespace {

class CudaStepGraph final : public StepGraph {
 public:
  ~CudaStepGraph() override {
    if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  absl::Status Init() {
    return Cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "stream");
  }
  void* stream() const override { return stream_; }
  absl::Status Capture(const std::function<absl::Status()>& layers) override {
    if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
    exec_ = nullptr;
    if (absl::Status s =
            Cuda(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "capture");
        !s.ok()) {
      return s;
    }
    const absl::Status ran = layers();
    cudaGraph_t graph = nullptr;
    const absl::Status ended = Cuda(cudaStreamEndCapture(stream_, &graph), "end capture");
    if (!ran.ok()) return ran;
    if (!ended.ok()) return ended;
    const absl::Status made = Cuda(cudaGraphInstantiate(&exec_, graph, 0), "instantiate");
    cudaGraphDestroy(graph);
    if (!made.ok()) return made;
    return Launch();
  }
  absl::Status Launch() override { return Cuda(cudaGraphLaunch(exec_, stream_), "launch"); }

 private:
  cudaStream_t stream_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
};

}  // namespace

absl::StatusOr<std::unique_ptr<StepGraph>> MakeStepGraph() {
  auto g = std::make_unique<CudaStepGraph>();
  if (absl::Status s = g->Init(); !s.ok()) return s;
  return g;
}

}  // namespace pagoda::bench
