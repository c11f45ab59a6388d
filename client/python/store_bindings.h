// pagoda.Store for Python: an embedded pagoda::Store (kvstore/engine/.../store.h).
#ifndef PAGODA_CLIENT_PYTHON_STORE_BINDINGS_H_
#define PAGODA_CLIENT_PYTHON_STORE_BINDINGS_H_

#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "pagoda/kvstore/store.h"

namespace pagoda::python {

class PyStore {
 public:
  PyStore(uint64_t host_capacity_bytes, const std::string& data_dir,
          const std::vector<uint32_t>& layouts, uint64_t ssd_capacity_bytes, uint64_t segment_bytes,
          bool ssd_sync_writes);
  pybind11::dict Stats();
  Store* get() const { return store_.get(); }

 private:
  std::unique_ptr<Store> store_;
};

void RegisterStore(pybind11::module_& m);

}  // namespace pagoda::python

#endif  // PAGODA_CLIENT_PYTHON_STORE_BINDINGS_H_
