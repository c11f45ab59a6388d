#include "dlpack_view.h"

#include <dlpack/dlpack.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "status_error.h"

namespace py = pybind11;

namespace pagoda::python {
namespace {

constexpr const char* kCapsuleName = "dltensor";

std::string DTypeText(const DLDataType& t) {
  return absl::StrCat("code ", t.code, ", ", t.bits, " bits, ", t.lanes, " lanes");
}

py::object Export(py::handle obj, uintptr_t cuda_stream) {
  if (PyCapsule_CheckExact(obj.ptr())) return py::reinterpret_borrow<py::object>(obj);
  if (!py::hasattr(obj, "__dlpack__")) return py::none();
  bool cuda = false;
  if (py::hasattr(obj, "__dlpack_device__")) {
    py::tuple dev = obj.attr("__dlpack_device__")();
    cuda = dev.size() >= 1 && dev[0].cast<int>() == kDLCUDA;
  }
  if (!cuda) return obj.attr("__dlpack__")();
  // DLPack: 1 names the legacy default stream (0 is not allowed for CUDA).
  const uintptr_t stream = cuda_stream == 0 ? 1 : cuda_stream;
  return obj.attr("__dlpack__")(py::arg("stream") = stream);
}

}  // namespace

HeldTensor ViewOf(py::handle obj, const char* what, uintptr_t cuda_stream) {
  HeldTensor held;
  held.capsule = Export(obj, cuda_stream);
  if (held.capsule.is_none() || !PyCapsule_IsValid(held.capsule.ptr(), kCapsuleName)) {
    RaiseInvalid(absl::StrCat(what, ": expected a torch tensor (or a DLPack producer), got ",
                              std::string(py::str(py::type::of(obj).attr("__name__")))));
  }
  auto* managed =
      static_cast<DLManagedTensor*>(PyCapsule_GetPointer(held.capsule.ptr(), kCapsuleName));
  const DLTensor& t = managed->dl_tensor;
  TensorView& v = held.view;
  if (t.ndim < 0 || t.ndim > TensorView::kMaxDims) {
    RaiseInvalid(absl::StrCat(what, ": ", t.ndim, " axes, at most ", TensorView::kMaxDims));
  }
  if (t.dtype.lanes == 1 && t.dtype.bits == 16 && t.dtype.code == kDLFloat) {
    v.dtype = DType::kFp16;
  } else if (t.dtype.lanes == 1 && t.dtype.bits == 16 && t.dtype.code == kDLBfloat) {
    v.dtype = DType::kBf16;
  } else {
    RaiseInvalid(absl::StrCat(what, ": wrong dtype (DLPack ", DTypeText(t.dtype),
                              "); want float16 or bfloat16"));
  }
  switch (t.device.device_type) {
    case kDLCPU:
      v.device = Device::kCpu;
      break;
    case kDLCUDA:
      v.device = Device::kCuda;
      break;
    default:
      RaiseInvalid(absl::StrCat(what, ": wrong device (DLPack device type ",
                                static_cast<int>(t.device.device_type), "); want cpu or cuda"));
  }
  v.device_index = t.device.device_id;
  v.data = t.data == nullptr ? nullptr : static_cast<char*>(t.data) + t.byte_offset;
  v.ndim = t.ndim;
  int64_t stride = 1;
  for (int d = t.ndim - 1; d >= 0; --d) {
    v.shape[d] = t.shape[d];
    v.strides[d] = t.strides != nullptr ? t.strides[d] : stride;  // null: compact row-major
    stride *= t.shape[d];
  }
  return held;
}

}  // namespace pagoda::python
