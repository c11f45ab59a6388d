// Where a benchmark's 3-axis tensors live for a worker backend: host memory for the CPU backend
// (views of the caller's buffers, no copy), device buffers for the CUDA one (synchronous copies
// on the legacy default stream, which orders them after the worker's work on that stream).
// Each numbered slot is one reusable buffer, grown as needed; a view stays valid until its slot
// is used again.
#ifndef PAGODA_BENCH_E2E_TENSOR_STAGE_H_
#define PAGODA_BENCH_E2E_TENSOR_STAGE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "pagoda/client/tensor.h"
#include "pagoda/client/worker_backend.h"

namespace pagoda::bench {

class TensorStage {
 public:
  virtual ~TensorStage() = default;
  // `host` ([a, b, c] of dtype) as a view on the stage's device.
  virtual absl::StatusOr<TensorView> In(int slot, const uint16_t* host, DType dtype, int64_t a,
                                        int64_t b, int64_t c) = 0;
  // An [a, b, c] output on the stage's device; Out() copies it back to `host` (a * b * c elements).
  virtual absl::StatusOr<TensorView> Out(int slot, uint16_t* host, DType dtype, int64_t a,
                                         int64_t b, int64_t c) = 0;
  virtual absl::Status Back(const TensorView& view, uint16_t* host) = 0;
};

// The worker backend a benchmark's --backend names: "cpu", or "cuda" (device 0, on `stream`, a
// cudaStream_t; null: the legacy default stream; Unavailable without CUDA or a device).
// InvalidArgument for another name.
absl::StatusOr<std::unique_ptr<WorkerBackend>> MakeWorkerBackend(const std::string& name,
                                                                 void* stream = nullptr);

// A CUDA graph of one decode step's layer loop (StepPlan::capturable), on its own stream (give
// stream() to the backend): Capture runs `layers` (the step's Attend calls) under a stream
// capture, instantiates what they enqueued and launches it; Launch replays it. Unavailable
// without CUDA.
class StepGraph {
 public:
  virtual ~StepGraph() = default;
  virtual void* stream() const = 0;
  virtual absl::Status Capture(const std::function<absl::Status()>& layers) = 0;
  virtual absl::Status Launch() = 0;
};
absl::StatusOr<std::unique_ptr<StepGraph>> MakeStepGraph();

// Device::kCpu always works; kCuda is Unavailable without CUDA in the build.
absl::StatusOr<std::unique_ptr<TensorStage>> MakeTensorStage(Device device, int device_index = 0);

}  // namespace pagoda::bench

#endif  // PAGODA_BENCH_E2E_TENSOR_STAGE_H_
