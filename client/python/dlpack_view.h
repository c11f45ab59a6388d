// Torch tensors (any DLPack producer) as the decode worker's TensorView, without a copy.
//
// A tensor is exported through its __dlpack__ method (or handed over as a "dltensor" capsule);
// the view points into the producer's memory (data + byte_offset) with its device, dtype
// (float16 / bfloat16), shape and element strides. The capsule is held, not consumed, for as long
// as the view is used: the producer's memory stays alive and the capsule's own destructor
// releases it.
#ifndef PAGODA_CLIENT_PYTHON_DLPACK_VIEW_H_
#define PAGODA_CLIENT_PYTHON_DLPACK_VIEW_H_

#include <pybind11/pybind11.h>

#include <cstdint>

#include "pagoda/client/tensor.h"

namespace pagoda::python {

struct HeldTensor {
  pybind11::object capsule;  // keeps the producer's memory alive while `view` is used
  TensorView view;
};

// The view of `obj` (a torch tensor, any object with __dlpack__, or a dltensor capsule).
// `cuda_stream` is the stream the view will be used on (a cudaStream_t as an integer; 0: the
// legacy default stream): a CUDA producer orders its pending work before it (DLPack's stream
// argument). Raises InvalidArgumentError (a ValueError) naming `what` for a dtype other than
// float16 / bfloat16, a device other than CPU / CUDA, more than TensorView::kMaxDims axes.
// Shape, dtype and device against what a call needs are the worker's checks (CheckTensor).
HeldTensor ViewOf(pybind11::handle obj, const char* what, uintptr_t cuda_stream);

}  // namespace pagoda::python

#endif  // PAGODA_CLIENT_PYTHON_DLPACK_VIEW_H_
