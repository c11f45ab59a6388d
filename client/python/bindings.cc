// `import pagoda` (native module pagoda._pagoda): the client of a pagodad service (Client), an
// embedded store (Store, store_bindings.cc) and the decode worker over torch tensors
// (DecodeWorker, worker_bindings.cc). Client page buffers are numpy arrays (any dtype, the bytes
// are what count) or CPU torch tensors (through .numpy(), which shares their memory, so a get
// writes straight into the tensor). Keys are Python ints (128 bits).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>

#include "pagoda/client/client.h"
#include "status_error.h"
#include "store_bindings.h"
#include "worker_bindings.h"

namespace py = pybind11;

namespace pagoda {
namespace {

PageKey KeyFromInt(const py::handle& h) {
  py::int_ v = py::reinterpret_borrow<py::int_>(h);
  py::int_ mask(0xFFFFFFFFFFFFFFFFULL);
  if (v < py::int_(0) || v >= (py::int_(1) << py::int_(128)).cast<py::int_>()) {
    throw py::value_error("page keys are ints in [0, 2**128)");
  }
  const uint64_t lo = (v & mask).cast<uint64_t>();
  const uint64_t hi = ((v >> py::int_(64)) & mask).cast<uint64_t>();
  return PageKey{hi, lo};
}

py::int_ IntFromKey(const PageKey& k) { return (py::int_(k.hi) << py::int_(64)) | py::int_(k.lo); }

std::vector<PageKey> Keys(const py::iterable& keys) {
  std::vector<PageKey> out;
  for (py::handle h : keys) out.push_back(KeyFromInt(h));
  return out;
}

// A writable (or readable) contiguous byte view of a numpy array / buffer / CPU torch tensor.
py::buffer_info Bytes(py::object obj, bool writable) {
  if (!py::isinstance<py::buffer>(obj) && py::hasattr(obj, "numpy")) {
    if (py::hasattr(obj, "is_cuda") && obj.attr("is_cuda").cast<bool>()) {
      throw py::value_error("GPU tensors are not supported by the Python binding; use .cpu()");
    }
    obj = obj.attr("numpy")();  // shares the tensor's memory
  }
  py::buffer b = py::reinterpret_borrow<py::buffer>(obj);
  py::buffer_info info = b.request(writable);
  // C-contiguous check: strides must be the packed ones.
  py::ssize_t expect = info.itemsize;
  for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
    if (info.shape[d] != 1 && info.strides[d] != expect) {
      throw py::value_error("page buffers must be C-contiguous");
    }
    expect *= info.shape[d];
  }
  return info;
}

std::string CodeName(const absl::Status& s) { return absl::StatusCodeToString(s.code()); }

using python::Raise;

class PyClient {
 public:
  PyClient(const std::string& target, const std::string& tenant, const std::string& token,
           const std::string& path, const std::string& local_socket, double timeout_s) {
    ClientOptions o;
    o.target = target;
    o.tenant = tenant;
    o.token = token;
    o.local_socket = local_socket;
    o.timeout = absl::Seconds(timeout_s);
    if (path == "local") {
      o.data_path = DataPathKind::kLocal;
    } else if (path == "remote") {
      o.data_path = DataPathKind::kRemote;  // the stream data path when offered, else gRPC
    } else if (path == "grpc") {
      o.data_path = DataPathKind::kRemote;  // page bytes over gRPC (the fallback path)
      o.remote_stream = false;
    } else if (path != "auto") {
      throw py::value_error("path must be 'auto', 'local', 'remote' or 'grpc'");
    }
    absl::StatusOr<std::unique_ptr<Client>> c;
    {
      py::gil_scoped_release nogil;
      c = Client::Connect(o);
    }
    if (!c.ok()) Raise(c.status());
    client_ = std::move(*c);
  }

  std::string data_path() const { return client_->data_path(); }

  // pages: one array [n, page_bytes] or a sequence of n arrays of page_bytes each.
  std::vector<std::string> Put(const py::iterable& keys, py::object pages, uint32_t layout,
                               bool raise_on_error) {
    std::vector<PageKey> k = Keys(keys);
    std::vector<py::buffer_info> held;
    std::vector<PutPage> puts;
    Views(pages, k.size(), /*writable=*/false, &held, [&](size_t i, uint8_t* p, size_t n) {
      puts.push_back({k[i], layout, absl::MakeConstSpan(p, n)});
    });
    std::vector<absl::Status> st;
    {
      py::gil_scoped_release nogil;
      st = client_->Put(puts);
    }
    std::vector<std::string> out;
    for (const absl::Status& s : st) {
      if (raise_on_error && !s.ok() && !absl::IsAlreadyExists(s)) Raise(s);
      out.push_back(CodeName(s));
    }
    return out;
  }

  // Fills `out` (same shapes as Put's pages); returns a list of bools (found). Errors other than
  // NotFound raise RuntimeError.
  std::vector<bool> GetInto(const py::iterable& keys, py::object out) {
    std::vector<PageKey> k = Keys(keys);
    std::vector<py::buffer_info> held;
    std::vector<GetPage> gets;
    Views(out, k.size(), /*writable=*/true, &held, [&](size_t i, uint8_t* p, size_t n) {
      gets.push_back({k[i], absl::MakeSpan(p, n)});
    });
    std::vector<GetResult> r;
    {
      py::gil_scoped_release nogil;
      r = client_->Get(gets);
    }
    std::vector<bool> found;
    for (const GetResult& g : r) {
      if (!g.status.ok() && !absl::IsNotFound(g.status)) Raise(g.status);
      found.push_back(g.status.ok());
    }
    return found;
  }

  // Allocates a uint8 array [n, PageBytes(layout)] and fills it; returns (array, found).
  py::tuple Get(const py::iterable& keys, uint32_t layout) {
    absl::StatusOr<PageLayout> l = PageLayout::FromId(layout);
    if (!l.ok()) throw py::value_error(std::string(l.status().message()));
    std::vector<PageKey> k = Keys(keys);
    py::array_t<uint8_t> arr(
        {static_cast<py::ssize_t>(k.size()), static_cast<py::ssize_t>(l->PageBytes())});
    py::list key_list;
    for (const PageKey& x : k) key_list.append(IntFromKey(x));
    std::vector<bool> found = GetInto(key_list, arr);
    return py::make_tuple(arr, found);
  }

  std::vector<bool> Exists(const py::iterable& keys) {
    std::vector<PageKey> k = Keys(keys);
    absl::StatusOr<std::vector<bool>> r;
    {
      py::gil_scoped_release nogil;
      r = client_->Exists(k);
    }
    if (!r.ok()) Raise(r.status());
    return *r;
  }

  size_t LongestPrefix(const py::iterable& keys) {
    std::vector<PageKey> k = Keys(keys);
    absl::StatusOr<size_t> r;
    {
      py::gil_scoped_release nogil;
      r = client_->LongestPrefix(k);
    }
    if (!r.ok()) Raise(r.status());
    return *r;
  }

  std::vector<std::string> Remove(const py::iterable& keys) {
    std::vector<PageKey> k = Keys(keys);
    std::vector<absl::Status> st;
    {
      py::gil_scoped_release nogil;
      st = client_->Remove(k);
    }
    std::vector<std::string> out;
    for (const absl::Status& s : st) out.push_back(CodeName(s));
    return out;
  }

  py::dict Stats() {
    absl::StatusOr<ServiceStats> s;
    {
      py::gil_scoped_release nogil;
      s = client_->Stats();
    }
    if (!s.ok()) Raise(s.status());
    py::dict d;
    py::list tiers;
    for (const TierUsage& t : s->tiers) {
      py::dict td;
      td["name"] = t.name;
      td["capacity_bytes"] = t.capacity_bytes;
      td["used_bytes"] = t.used_bytes;
      td["pages"] = t.pages;
      td["hits"] = t.hits;
      td["promotions"] = t.promotions;
      td["evictions"] = t.evictions;
      tiers.append(td);
    }
    d["tiers"] = tiers;
    d["pages"] = s->pages;
    d["misses"] = s->misses;
    d["active_leases"] = s->active_leases;
    d["pinned_bytes"] = s->pinned_bytes;
    d["checksum_failures"] = s->checksum_failures;
    d["local_clients"] = s->local_clients;
    d["uptime_s"] = s->uptime_s;
    return d;
  }

 private:
  // Calls fn(i, data, size) for each of the n page buffers in `pages`.
  template <typename Fn>
  static void Views(py::object pages, size_t n, bool writable, std::vector<py::buffer_info>* held,
                    Fn fn) {
    const bool single = py::isinstance<py::buffer>(pages) ||
                        (py::hasattr(pages, "numpy") && !py::isinstance<py::list>(pages));
    if (single) {
      held->push_back(Bytes(pages, writable));
      const py::buffer_info& b = held->back();
      const size_t total = static_cast<size_t>(b.size * b.itemsize);
      if (n == 0 || b.ndim < 1 || static_cast<size_t>(b.shape[0]) != n) {
        throw py::value_error("pages: first dimension must equal the number of keys");
      }
      const size_t each = total / n;
      for (size_t i = 0; i < n; ++i) fn(i, static_cast<uint8_t*>(b.ptr) + i * each, each);
      return;
    }
    py::sequence seq = py::reinterpret_borrow<py::sequence>(pages);
    if (static_cast<size_t>(py::len(seq)) != n) {
      throw py::value_error("pages: need one buffer per key");
    }
    for (size_t i = 0; i < n; ++i) {
      held->push_back(Bytes(seq[i], writable));
      const py::buffer_info& b = held->back();
      fn(i, static_cast<uint8_t*>(b.ptr), static_cast<size_t>(b.size * b.itemsize));
    }
  }

  std::unique_ptr<Client> client_;
};

}  // namespace
}  // namespace pagoda

PYBIND11_MODULE(_pagoda, m) {
  using pagoda::PyClient;
  m.doc() = "Pagoda: the pagodad client, an embedded store and the decode worker.";
  pagoda::python::RegisterStatusErrors(m);
  py::class_<PyClient>(m, "Client")
      .def(py::init<const std::string&, const std::string&, const std::string&, const std::string&,
                    const std::string&, double>(),
           py::arg("target") = "127.0.0.1:50051", py::arg("tenant") = "default",
           py::arg("token") = "", py::arg("path") = "auto", py::arg("local_socket") = "",
           py::arg("timeout_s") = 30.0)
      .def_property_readonly("data_path", &PyClient::data_path,
                             "'local' (shared-memory zero-copy), 'stream' (page bytes on the TCP "
                             "data path, control on gRPC) or 'remote' (page bytes over gRPC)")
      .def("put", &PyClient::Put, py::arg("keys"), py::arg("pages"), py::arg("layout"),
           py::arg("raise_on_error") = true,
           "Store pages (array [n, page_bytes] or list of arrays / CPU tensors). Returns one "
           "status name per page ('OK', 'ALREADY_EXISTS', ...).")
      .def("get", &PyClient::Get, py::arg("keys"), py::arg("layout"),
           "Fetch pages into a new uint8 array [n, page_bytes]; returns (array, found).")
      .def("get_into", &PyClient::GetInto, py::arg("keys"), py::arg("out"),
           "Fetch pages into caller buffers (numpy arrays or CPU torch tensors); returns found.")
      .def("exists", &PyClient::Exists, py::arg("keys"))
      .def("longest_prefix", &PyClient::LongestPrefix, py::arg("keys"),
           "Number of leading keys of a chain that are stored (the reusable prefix).")
      .def("remove", &PyClient::Remove, py::arg("keys"))
      .def("stats", &PyClient::Stats);
  m.def(
      "layout_id",
      [](const std::string& dtype, uint32_t kv_heads, uint32_t head_dim, uint32_t page_tokens) {
        pagoda::PageLayout l{dtype == "bf16" ? pagoda::DType::kBf16 : pagoda::DType::kFp16,
                             kv_heads, head_dim, page_tokens};
        if (dtype != "fp16" && dtype != "bf16") throw py::value_error("dtype: fp16 or bf16");
        absl::Status s = l.Validate();
        if (!s.ok()) throw py::value_error(std::string(s.message()));
        return l.Id();
      },
      py::arg("dtype") = "fp16", py::arg("kv_heads") = 8, py::arg("head_dim") = 128,
      py::arg("page_tokens") = 16);
  m.def(
      "page_bytes",
      [](uint32_t id) {
        absl::StatusOr<pagoda::PageLayout> l = pagoda::PageLayout::FromId(id);
        if (!l.ok()) throw py::value_error(std::string(l.status().message()));
        return l->PageBytes();
      },
      py::arg("layout"));
  m.def(
      "chain_keys",
      [](const std::vector<int32_t>& tokens, uint32_t page_tokens, const std::string& model,
         uint32_t layer, const std::string& salt) {
        std::vector<pagoda::PageKey> keys =
            pagoda::ChainPageKeys(tokens, page_tokens, pagoda::PageKeyExtra{model, layer, salt});
        py::list out;
        for (const pagoda::PageKey& k : keys) out.append(pagoda::IntFromKey(k));
        return out;
      },
      py::arg("tokens"), py::arg("page_tokens") = 16, py::arg("model") = "", py::arg("layer") = 0,
      py::arg("salt") = "",
      "Chained-hash page keys of the full pages of `tokens` (stable across processes).");
  pagoda::python::RegisterStore(m);
  pagoda::python::RegisterDecodeWorker(m);
}
