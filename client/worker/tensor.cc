#include "pagoda/client/tensor.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace pagoda {

TensorView TensorView::Contiguous(void* data, DType dtype, std::initializer_list<int64_t> shape,
                                  Device device, int device_index) {
  TensorView t;
  t.data = data;
  t.dtype = dtype;
  t.device = device;
  t.device_index = device_index;
  t.ndim = static_cast<int>(shape.size() > kMaxDims ? kMaxDims : shape.size());
  int i = 0;
  for (int64_t s : shape) {
    if (i == t.ndim) break;
    t.shape[i++] = s;
  }
  int64_t stride = 1;
  for (int d = t.ndim - 1; d >= 0; --d) {
    t.strides[d] = stride;
    stride *= t.shape[d];
  }
  return t;
}

std::string TensorView::ToString() const {
  return absl::StrCat("[", absl::StrJoin(shape, shape + ndim, ", "), "] ",
                      std::string(DTypeName(dtype)), " ",
                      device == Device::kCuda ? absl::StrCat("cuda:", device_index) : "cpu");
}

absl::Status CheckTensor(const TensorView& t, const char* what,
                         std::initializer_list<int64_t> shape, DType dtype, Device device) {
  auto bad = [&](const std::string& why) {
    std::string want =
        absl::StrCat("[", absl::StrJoin(shape, ", "), "] ", std::string(DTypeName(dtype)), " ",
                     device == Device::kCuda ? "cuda" : "cpu");
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": ", why, " (got ", t.ToString(), ", want ", want, ")"));
  };
  if (t.data == nullptr) return bad("null data");
  if (t.device != device) return bad("wrong device");
  if (t.dtype != dtype) return bad("wrong dtype");
  if (t.ndim != static_cast<int>(shape.size())) return bad("wrong number of axes");
  int i = 0;
  for (int64_t s : shape) {
    if (t.shape[i] != s) return bad(absl::StrCat("axis ", i, " has the wrong size"));
    if (t.strides[i] < 0) return bad(absl::StrCat("axis ", i, " has a negative stride"));
    ++i;
  }
  if (t.ndim > 0 && t.strides[t.ndim - 1] != 1 && t.shape[t.ndim - 1] > 1) {
    return bad("the last axis must be contiguous (stride 1)");
  }
  return absl::OkStatus();
}

}  // namespace pagoda
