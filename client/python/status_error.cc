#include "status_error.h"

#include <string>

namespace py = pybind11;

namespace pagoda::python {
namespace {

// Owned by the module (module attributes); these are borrowed handles valid while it is loaded.
PyObject* status_error = nullptr;
PyObject* invalid_argument_error = nullptr;

}  // namespace

void RegisterStatusErrors(py::module_& m) {
  py::object type = py::module_::import("builtins").attr("type");
  py::dict ns;
  ns["__module__"] = "pagoda";
  ns["__doc__"] =
      "A Pagoda call failed. .code is the status code name ('NOT_FOUND', 'DATA_LOSS', "
      "'RESOURCE_EXHAUSTED', ...), .message the reason.";
  ns["code"] = "UNKNOWN";
  ns["message"] = "";
  py::object base = type("StatusError", py::make_tuple(py::handle(PyExc_RuntimeError)), ns);
  py::dict ns2;
  ns2["__module__"] = "pagoda";
  ns2["__doc__"] =
      "Bad input (code 'INVALID_ARGUMENT'): a wrong shape, dtype, device or stride, an unknown "
      "sequence, a layer out of range. Nothing changed.";
  py::object invalid =
      type("InvalidArgumentError", py::make_tuple(base, py::handle(PyExc_ValueError)), ns2);
  m.attr("StatusError") = base;
  m.attr("InvalidArgumentError") = invalid;
  status_error = base.ptr();
  invalid_argument_error = invalid.ptr();
}

py::object StatusException(const absl::Status& s) {
  const bool invalid = absl::IsInvalidArgument(s);
  py::handle cls(invalid ? invalid_argument_error : status_error);
  const std::string code = absl::StatusCodeToString(s.code());
  const std::string message(s.message());
  py::object e = cls(code + ": " + message);
  e.attr("code") = code;
  e.attr("message") = message;
  return e;
}

void Raise(const absl::Status& s) {
  py::object e = StatusException(s);
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(e.ptr())), e.ptr());
  throw py::error_already_set();
}

void RaiseInvalid(const std::string& message) { Raise(absl::InvalidArgumentError(message)); }

}  // namespace pagoda::python
