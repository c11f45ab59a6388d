// pagoda.Store: an embedded page store (host arena + optional SSD tier) in this process, for the
// decode worker (which runs in-process with its Store).
#include "store_bindings.h"

#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "status_error.h"

namespace py = pybind11;

namespace pagoda::python {

PyStore::PyStore(uint64_t host_capacity_bytes, const std::string& data_dir,
                 const std::vector<uint32_t>& layouts, uint64_t ssd_capacity_bytes,
                 uint64_t segment_bytes, bool ssd_sync_writes) {
  StoreOptions o;
  o.host_capacity_bytes = host_capacity_bytes;
  o.data_dir = data_dir;
  o.ssd_capacity_bytes = ssd_capacity_bytes;
  o.segment_bytes = segment_bytes;
  o.ssd_sync_writes = ssd_sync_writes;
  o.layouts.clear();
  for (uint32_t id : layouts) {
    absl::StatusOr<PageLayout> l = PageLayout::FromId(id);
    if (!l.ok()) Raise(l.status());
    o.layouts.push_back(*l);
  }
  if (o.layouts.empty()) RaiseInvalid("layouts: at least one layout id (pagoda.layout_id(...))");
  absl::StatusOr<std::unique_ptr<Store>> s;
  {
    py::gil_scoped_release nogil;
    s = Store::Open(o);
  }
  if (!s.ok()) Raise(s.status());
  store_ = std::move(*s);
}

py::dict PyStore::Stats() {
  StoreStats s;
  {
    py::gil_scoped_release nogil;
    s = store_->Stats();
  }
  py::dict d;
  py::list tiers;
  for (int i = 0; i < kNumTiers; ++i) {
    const TierStats& t = s.tiers[i];
    py::dict td;
    td["name"] = std::string(TierName(static_cast<Tier>(i)));
    td["present"] = t.present;
    td["capacity_bytes"] = t.capacity_bytes;
    td["used_bytes"] = t.used_bytes;
    td["pages"] = t.pages;
    td["hits"] = t.hits;
    td["evictions"] = t.evictions;
    td["promotions"] = t.promotions;
    td["bytes_in"] = t.bytes_in;
    td["bytes_out"] = t.bytes_out;
    tiers.append(td);
  }
  d["tiers"] = tiers;
  d["pages"] = s.pages;
  d["misses"] = s.misses;
  d["puts"] = s.puts;
  d["removes"] = s.removes;
  d["dropped"] = s.dropped;
  d["checksum_failures"] = s.checksum_failures;
  d["active_leases"] = s.active_leases;
  d["pinned_bytes"] = s.pinned_bytes;
  return d;
}

void RegisterStore(py::module_& m) {
  py::class_<PyStore>(m, "Store",
                      "An embedded Pagoda page store in this process (host tier: one memory "
                      "arena; SSD tier under data_dir when given). The decode worker runs over "
                      "one. Safe to share between workers and threads.")
      .def(py::init<uint64_t, const std::string&, const std::vector<uint32_t>&, uint64_t, uint64_t,
                    bool>(),
           py::kw_only(), py::arg("host_capacity_bytes") = uint64_t{1} << 30,
           py::arg("data_dir") = "", py::arg("layouts"), py::arg("ssd_capacity_bytes") = 0,
           py::arg("segment_bytes") = uint64_t{4} << 20, py::arg("ssd_sync_writes") = false,
           "Opens a store. layouts: the page layout ids it accepts (pagoda.layout_id). data_dir "
           "empty: no SSD tier (pages evicted from the host tier are dropped). Raises "
           "InvalidArgumentError for bad options, StatusError when the SSD tier cannot be "
           "opened.")
      .def("stats", &PyStore::Stats,
           "Tier usage and traffic: {'tiers': [{'name', 'present', 'capacity_bytes', "
           "'used_bytes', 'pages', 'hits', 'evictions', 'promotions', 'bytes_in', 'bytes_out'}, "
           "...], 'pages', 'misses', 'puts', ...}.");
}

}  // namespace pagoda::python
