// A non-owning view of a tensor handed to the decode worker: a pointer, a device, a dtype, a
// shape and element strides. It is what a PyTorch tensor becomes through DLPack (the Python face
// builds one per call, no copy), and what a C++ engine builds around its own buffers.
//
// Thread safety: a plain value.
#ifndef PAGODA_CLIENT_TENSOR_H_
#define PAGODA_CLIENT_TENSOR_H_

#include <cstdint>
#include <initializer_list>
#include <string>

#include "absl/status/status.h"
#include "pagoda/kvstore/page.h"

namespace pagoda {

enum class Device : uint8_t { kCpu = 0, kCuda = 1 };

struct TensorView {
  static constexpr int kMaxDims = 4;

  void* data = nullptr;
  Device device = Device::kCpu;
  int device_index = 0;
  DType dtype = DType::kFp16;
  int ndim = 0;
  int64_t shape[kMaxDims] = {0, 0, 0, 0};
  int64_t strides[kMaxDims] = {0, 0, 0, 0};  // in elements

  // A contiguous (row-major) view of `data` with `shape` (at most kMaxDims axes).
  static TensorView Contiguous(void* data, DType dtype, std::initializer_list<int64_t> shape,
                               Device device = Device::kCpu, int device_index = 0);

  // Element offset of index (i0, i1, i2) of a 3-axis view.
  int64_t Offset(int64_t i0, int64_t i1, int64_t i2) const {
    return i0 * strides[0] + i1 * strides[1] + i2 * strides[2];
  }
  uint16_t* At(int64_t i0, int64_t i1, int64_t i2) const {
    return static_cast<uint16_t*>(data) + Offset(i0, i1, i2);
  }
  // "[2, 8, 128] bf16 cpu".
  std::string ToString() const;
};

// OK when `t` is a `what` tensor of exactly `shape`, `dtype`, on `device`, with a contiguous last
// axis (stride 1), non-negative strides and a non-null pointer; InvalidArgument naming `what` and
// the mismatch otherwise.
absl::Status CheckTensor(const TensorView& t, const char* what,
                         std::initializer_list<int64_t> shape, DType dtype, Device device);

}  // namespace pagoda

#endif  // PAGODA_CLIENT_TENSOR_H_
