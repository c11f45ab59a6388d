// pagoda.DecodeWorker for Python: the decode worker (pagoda/client/decode_worker.h) over torch
// tensors (DLPack views, no copies) and an embedded pagoda.Store.
#ifndef PAGODA_CLIENT_PYTHON_WORKER_BINDINGS_H_
#define PAGODA_CLIENT_PYTHON_WORKER_BINDINGS_H_

#include <pybind11/pybind11.h>

namespace pagoda::python {

void RegisterDecodeWorker(pybind11::module_& m);

}  // namespace pagoda::python

#endif  // PAGODA_CLIENT_PYTHON_WORKER_BINDINGS_H_
