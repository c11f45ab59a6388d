// Errors of the Python binding: an absl::Status becomes a Python exception carrying its code.
//
//   pagoda.StatusError (a RuntimeError): .code ("NOT_FOUND", "DATA_LOSS", ...) and .message.
//   pagoda.InvalidArgumentError (a StatusError and a ValueError): bad input, nothing changed.
#ifndef PAGODA_CLIENT_PYTHON_STATUS_ERROR_H_
#define PAGODA_CLIENT_PYTHON_STATUS_ERROR_H_

#include <pybind11/pybind11.h>

#include "absl/status/status.h"

namespace pagoda::python {

// Defines StatusError and InvalidArgumentError in `m`. Once, at import.
void RegisterStatusErrors(pybind11::module_& m);

// The exception for `s` (not OK), ready to raise or to hand back as a value.
pybind11::object StatusException(const absl::Status& s);

// Raises StatusException(s).
[[noreturn]] void Raise(const absl::Status& s);

// Raises InvalidArgumentError(message) (a ValueError) for input the binding itself refuses.
[[noreturn]] void RaiseInvalid(const std::string& message);

}  // namespace pagoda::python

#endif  // PAGODA_CLIENT_PYTHON_STATUS_ERROR_H_
