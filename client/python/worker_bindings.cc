// pagoda.DecodeWorker: each call converts its tensors to TensorViews (dlpack_view.h), releases the
// GIL, and calls the C++ worker; a non-OK status is raised (status_error.h). The C++ worker is not
// synchronized: a per-worker mutex serializes Python threads that share one.
#include "worker_bindings.h"

#include <pybind11/stl.h>

#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "dlpack_view.h"
#include "pagoda/client/decode_worker.h"
#include "status_error.h"
#include "store_bindings.h"

namespace py = pybind11;

namespace pagoda::python {
namespace {

// "cpu", "cuda" or "cuda:N".
std::pair<Device, int> ParseDevice(const std::string& s) {
  if (s == "cpu") return {Device::kCpu, 0};
  if (s == "cuda") return {Device::kCuda, 0};
  int index = 0;
  if (s.rfind("cuda:", 0) == 0 && absl::SimpleAtoi(s.substr(5), &index) && index >= 0) {
    return {Device::kCuda, index};
  }
  RaiseInvalid(absl::StrCat("device must be 'cpu', 'cuda' or 'cuda:N', got '", s, "'"));
}

// The stream a CUDA worker runs on: `stream` (an int cudaStream_t or an object with .cuda_stream,
// e.g. torch.cuda.Stream), or torch's current stream on the device when None.
uintptr_t StreamHandle(py::handle stream, int device) {
  py::object s = py::reinterpret_borrow<py::object>(stream);
  if (s.is_none()) {
    try {
      s = py::module_::import("torch").attr("cuda").attr("current_stream")(device);
    } catch (py::error_already_set& e) {
      Raise(absl::UnavailableError(absl::StrCat("device cuda:", device,
                                                ": no current CUDA stream from torch (", e.what(),
                                                "); pass stream= or use device='cpu'")));
    }
  }
  if (py::hasattr(s, "cuda_stream")) s = s.attr("cuda_stream");
  return s.cast<uintptr_t>();
}

void SetSelectorField(retriever::SelectorOptions& o, const std::string& key, py::handle v) {
  if (key == "cluster_tokens") {
    o.cluster_tokens = v.cast<int>();
  } else if (key == "kmeans_iters") {
    o.kmeans_iters = v.cast<int>();
  } else if (key == "resident_factor") {
    o.resident_factor = v.cast<double>();
  } else if (key == "rescore_factor") {
    o.rescore_factor = v.cast<double>();
  } else if (key == "reuse_steps") {
    o.reuse_steps = v.cast<int>();
  } else if (key == "logical_page_tokens") {
    o.logical_page_tokens = v.cast<int>();
  } else if (key == "prefetch_pages") {
    o.prefetch_pages = v.cast<int>();
  } else if (key == "boundary_threshold") {
    o.boundary_threshold = v.cast<float>();
  } else if (key == "coverage_threshold") {
    o.coverage_threshold = v.cast<float>();
  } else if (key == "streaming_kv_heads") {
    o.streaming_kv_heads = v.cast<std::vector<int>>();
  } else {
    RaiseInvalid(absl::StrCat("selector: unknown option '", key, "'"));
  }
}

py::object StatusOrNone(const absl::Status& s) { return s.ok() ? py::none() : StatusException(s); }

class PyDecodeWorker {
 public:
  PyDecodeWorker(PyStore& store, const DecodeWorkerOptions& options, Device device,
                 int device_index, uintptr_t stream)
      : device_(device), device_index_(device_index), stream_(stream) {
    std::unique_ptr<WorkerBackend> backend;
    if (device == Device::kCpu) {
      backend = MakeCpuWorkerBackend();
    } else {
      CudaWorkerBackendOptions co;
      co.device = device_index;
      co.stream = reinterpret_cast<void*>(stream);
      absl::StatusOr<std::unique_ptr<WorkerBackend>> b = MakeCudaWorkerBackend(co);
      if (!b.ok()) Raise(b.status());
      backend = std::move(*b);
    }
    absl::StatusOr<std::unique_ptr<DecodeWorker>> w;
    {
      py::gil_scoped_release nogil;
      w = DecodeWorker::Create(store.get(), std::move(backend), options);
    }
    if (!w.ok()) Raise(w.status());
    worker_ = std::move(*w);
  }

 private:
  // Runs fn, one worker call, without the GIL and under the worker's lock; an error status
  // raises, a StatusOr's value is returned.
  template <typename Fn>
  auto Call(Fn&& fn) {
    auto r = [&] {
      py::gil_scoped_release nogil;
      std::lock_guard<std::mutex> lock(mu_);
      return fn();
    }();
    if constexpr (std::is_same_v<decltype(r), absl::Status>) {
      if (!r.ok()) Raise(r);
    } else {
      if (!r.ok()) Raise(r.status());
      return std::move(*r);
    }
  }

 public:
  OpenedSequence Open(const std::vector<int32_t>& token_ids) {
    return Call([&] { return worker_->Open(token_ids); });
  }

  void Prefill(SequenceId id, int layer, py::handle k, py::handle v) {
    HeldTensor hk = View(k, "k"), hv = View(v, "v");
    Call([&] { return worker_->Prefill(id, layer, hk.view, hv.view); });
  }

  void PrefillAttend(SequenceId id, int layer, py::handle q, py::handle k, py::handle v,
                     py::handle out) {
    HeldTensor hq = View(q, "q"), hk = View(k, "k"), hv = View(v, "v"), ho = View(out, "out");
    Call([&] { return worker_->PrefillAttend(id, layer, hq.view, hk.view, hv.view, ho.view); });
  }

  SequenceId Fork(SequenceId parent) {
    return Call([&] { return worker_->Fork(parent); });
  }

  void Close(SequenceId id) {
    Call([&] { return worker_->Close(id); });
  }

  StepPlan Plan(const std::vector<SequenceId>& ids, const std::vector<int32_t>& token_ids) {
    return Call([&] { return worker_->Plan(ids, token_ids); });
  }

  void Attend(const StepPlan& plan, int layer, py::handle q, py::handle k, py::handle v,
              py::handle out) {
    HeldTensor hq = View(q, "q"), hk = View(k, "k"), hv = View(v, "v"), ho = View(out, "out");
    Call([&] { return worker_->Attend(plan, layer, hq.view, hk.view, hv.view, ho.view); });
  }

  void Replayed(const StepPlan& plan) {
    Call([&] { return worker_->Replayed(plan); });
  }

  WorkerStepStats Finish(const StepPlan& plan) {
    return Call([&] { return worker_->Finish(plan); });
  }

  void Flush() {
    Call([&] { return worker_->Flush(); });
  }

  void Extend(SequenceId id, const std::vector<int32_t>& token_ids) {
    Call([&] { return worker_->Extend(id, token_ids); });
  }

  void Truncate(SequenceId id, int64_t tokens) {
    Call([&] { return worker_->Truncate(id, tokens); });
  }

  WorkerStepStats AttendBlock(SequenceId id, int layer, py::handle q, py::handle k, py::handle v,
                              py::handle out, const std::vector<uint8_t>& keep_pages) {
    HeldTensor hq = View(q, "q"), hk = View(k, "k"), hv = View(v, "v"), ho = View(out, "out");
    return Call([&] {
      return worker_->AttendBlock(id, layer, hq.view, hk.view, hv.view, ho.view, keep_pages);
    });
  }

  void CommitBlock(SequenceId id, int layer) {
    Call([&] { return worker_->CommitBlock(id, layer); });
  }

  int64_t Length(SequenceId id, int layer) {
    std::lock_guard<std::mutex> lock(mu_);
    absl::StatusOr<int64_t> r = worker_->Length(id, layer);
    if (!r.ok()) Raise(r.status());
    return *r;
  }

  py::list PageKeys(SequenceId id, int layer) {
    absl::StatusOr<std::vector<PageKey>> r;
    {
      std::lock_guard<std::mutex> lock(mu_);
      r = worker_->PageKeys(id, layer);
    }
    if (!r.ok()) Raise(r.status());
    py::list out;
    for (const PageKey& k : *r) out.append((py::int_(k.hi) << py::int_(64)) | py::int_(k.lo));
    return out;
  }

  std::vector<std::vector<int32_t>> LastRows(SequenceId id, int layer) {
    std::lock_guard<std::mutex> lock(mu_);
    auto r = worker_->LastRows(id, layer);
    if (!r.ok()) Raise(r.status());
    return *r;
  }

  std::vector<std::vector<int64_t>> AttendedPositions(SequenceId id, int layer) {
    std::lock_guard<std::mutex> lock(mu_);
    auto r = worker_->AttendedPositions(id, layer);
    if (!r.ok()) Raise(r.status());
    return *r;
  }

  py::dict Stats() {
    std::lock_guard<std::mutex> lock(mu_);
    const WorkerStats s = worker_->Stats();
    py::dict d;
    d["sequences"] = s.sequences;
    d["pool_slots_per_head"] = s.pool_slots_per_head;
    d["pool_used"] = s.pool_used;
    d["pool_evictions"] = s.pool_evictions;
    d["pages_committed"] = s.pages_committed;
    d["pages_reused"] = s.pages_reused;
    d["layout_pages"] = s.layout_pages;
    d["pool_bytes"] = s.pool_bytes;
    d["summary_table_bytes"] = s.summary_table_bytes;
    d["selector_host_bytes"] = s.selector_host_bytes;
    return d;
  }

  std::string device() const {
    return device_ == Device::kCpu ? "cpu" : absl::StrCat("cuda:", device_index_);
  }
  uintptr_t stream() const { return stream_; }
  const DecodeWorkerOptions& options() const { return worker_->options(); }

 private:
  HeldTensor View(py::handle obj, const char* what) {
    HeldTensor h = ViewOf(obj, what, stream_);
    if (h.view.device == Device::kCuda && device_ == Device::kCuda &&
        h.view.device_index != device_index_) {
      RaiseInvalid(
          absl::StrCat(what, ": on cuda:", h.view.device_index, ", the worker is on ", device()));
    }
    return h;
  }

  const Device device_;
  const int device_index_;
  const uintptr_t stream_;
  std::mutex mu_;
  std::unique_ptr<DecodeWorker> worker_;
};

std::unique_ptr<PyDecodeWorker> MakeWorker(
    PyStore& store, int num_layers, int q_heads, int kv_heads, int head_dim,
    const std::string& dtype, int page_tokens, const std::string& policy, int64_t budget_tokens,
    int sink_pages, int window_pages, int32_t pool_slots_per_head, int64_t summary_slots,
    int64_t prepare_host_bytes, int select_threads, bool prefill_to_pool, bool capturable_steps,
    const py::dict& selector, const std::string& tenant, const std::string& model_id,
    const std::string& salt, uint32_t first_layer, bool pin_prompt, bool prefetch, bool verify,
    bool boundary_trigger, float boundary_threshold, const std::vector<float>& layer_thresholds,
    const std::vector<std::vector<int>>& layer_streaming_heads, const std::string& device,
    py::handle stream) {
  DecodeWorkerOptions o;
  if (dtype != "fp16" && dtype != "bf16") RaiseInvalid("dtype: 'fp16' or 'bf16'");
  if (kv_heads < 1 || head_dim < 1 || page_tokens < 1) {
    RaiseInvalid("kv_heads, head_dim and page_tokens must be positive");
  }
  o.layout =
      PageLayout{dtype == "bf16" ? DType::kBf16 : DType::kFp16, static_cast<uint32_t>(kv_heads),
                 static_cast<uint32_t>(head_dim), static_cast<uint32_t>(page_tokens)};
  o.num_layers = num_layers;
  o.q_heads = q_heads;
  absl::StatusOr<retriever::Policy> p = retriever::ParsePolicy(policy);
  if (!p.ok()) Raise(p.status());
  o.policy = *p;
  o.selector.budget_tokens = budget_tokens;
  o.selector.sink_pages = sink_pages;
  o.selector.window_pages = window_pages;
  for (auto [key, value] : selector) SetSelectorField(o.selector, py::str(key), value);
  o.pool_slots_per_head = pool_slots_per_head;
  o.summary_slots = summary_slots;
  o.prepare_host_bytes = prepare_host_bytes;
  o.select_threads = select_threads;
  o.prefill_to_pool = prefill_to_pool;
  o.capturable_steps = capturable_steps;
  o.tenant = tenant;
  o.model_id = model_id;
  o.salt = salt;
  o.first_layer = first_layer;
  o.pin_prompt = pin_prompt;
  o.prefetch = prefetch;
  o.verify = verify;
  o.boundary_trigger = boundary_trigger;
  o.boundary_threshold = boundary_threshold;
  o.layer_thresholds = layer_thresholds;
  o.layer_streaming_heads = layer_streaming_heads;
  const auto [dev, index] = ParseDevice(device);
  const uintptr_t handle = dev == Device::kCuda ? StreamHandle(stream, index) : 0;
  return std::make_unique<PyDecodeWorker>(store, o, dev, index, handle);
}

}  // namespace

void RegisterDecodeWorker(py::module_& m) {
  py::class_<OpenedSequence>(m, "OpenedSequence", "A sequence opened by DecodeWorker.open.")
      .def_readonly("id", &OpenedSequence::id, "The sequence id.")
      .def_readonly("cached_tokens", &OpenedSequence::cached_tokens,
                    "Leading prompt tokens found in the store for every layer (a multiple of "
                    "page_tokens, at most len(prompt) - 1): prefill tokens [cached_tokens, n).")
      .def("__repr__", [](const OpenedSequence& s) {
        return absl::StrCat("OpenedSequence(id=", s.id, ", cached_tokens=", s.cached_tokens, ")");
      });
  py::class_<StepPlan>(m, "StepPlan", "One planned decode step (DecodeWorker.plan). Opaque.")
      .def_readonly("id", &StepPlan::id)
      .def_readonly("sequences", &StepPlan::sequences, "The batch, in row order.")
      .def_readonly("capturable", &StepPlan::capturable,
                    "Planned whole: attend only enqueues device work, so the layer loop may be "
                    "captured in a CUDA graph (torch.cuda.graph) and, at a later capturable step "
                    "with the same graph_key, replayed (then call replayed). Same tensors each "
                    "time, contiguous.")
      .def_readonly("graph_key", &StepPlan::graph_key,
                    "Which captured graph a capturable step may replay: a new key means capture "
                    "again.");
  py::class_<WorkerStepStats>(m, "StepStats",
                              "What one step did, all layers (DecodeWorker.finish).")
      .def_property_readonly(
          "sequence_status",
          [](const WorkerStepStats& s) {
            py::list out;
            for (const absl::Status& st : s.sequence_status) out.append(StatusOrNone(st));
            return out;
          },
          "Per sequence of the plan: None, or the StatusError its step failed with (its outputs "
          "were zeroed, never computed from wrong bytes; close it).")
      .def_property_readonly("ok",
                             [](const WorkerStepStats& s) {
                               for (const absl::Status& st : s.sequence_status) {
                                 if (!st.ok()) return false;
                               }
                               return true;
                             })
      .def_readonly("retrievals", &WorkerStepStats::retrievals)
      .def_readonly("attended_head_pages", &WorkerStepStats::attended_head_pages)
      .def_readonly("fetched_head_pages", &WorkerStepStats::fetched_head_pages)
      .def_readonly("unleased_head_pages", &WorkerStepStats::unleased_head_pages)
      .def_readonly("pool_hits", &WorkerStepStats::pool_hits)
      .def_readonly("shared_head_pages", &WorkerStepStats::shared_head_pages)
      .def_readonly("verify_failures", &WorkerStepStats::verify_failures)
      .def_readonly("stale_hints", &WorkerStepStats::stale_hints)
      .def_readonly("fallback_reads", &WorkerStepStats::fallback_reads)
      .def_readonly("bytes_fetched", &WorkerStepStats::bytes_fetched)
      .def_property_readonly(
          "bytes_from_tier",
          [](const WorkerStepStats& s) {
            py::dict d;
            for (int t = 0; t < kNumTiers; ++t) {
              d[py::str(std::string(TierName(static_cast<Tier>(t))))] = s.bytes_from_tier[t];
            }
            return d;
          },
          "Fetched bytes by the store tier the page was in: {'gpu', 'host', 'ssd'}.")
      .def_readonly("bytes_committed", &WorkerStepStats::bytes_committed)
      .def_readonly("append_s", &WorkerStepStats::append_s)
      .def_readonly("select_s", &WorkerStepStats::select_s)
      .def_readonly("fetch_s", &WorkerStepStats::fetch_s)
      .def_readonly("verify_s", &WorkerStepStats::verify_s)
      .def_readonly("resolve_s", &WorkerStepStats::resolve_s)
      .def_readonly("lease_s", &WorkerStepStats::lease_s)
      .def_readonly("gather_s", &WorkerStepStats::gather_s)
      .def_readonly("attend_s", &WorkerStepStats::attend_s)
      .def_readonly("commit_s", &WorkerStepStats::commit_s);

  py::class_<PyDecodeWorker>(
      m, "DecodeWorker",
      "Pagoda's decode path as an attention backend: all layers of a model, a batch of "
      "sequences, KV pages in a pagoda.Store. Call order: open -> prefill (per layer) -> "
      "plan -> attend (per layer) -> finish. Tensors are torch tensors (any DLPack producer) of "
      "the worker's dtype on its device; they are read and written in place, never copied by "
      "the binding. Errors raise InvalidArgumentError (a ValueError) for bad input, which "
      "changes nothing, and StatusError (.code) otherwise. Not for concurrent use: calls from "
      "several threads are serialized.")
      .def(py::init(&MakeWorker), py::arg("store"), py::kw_only(), py::arg("num_layers"),
           py::arg("q_heads"), py::arg("kv_heads"), py::arg("head_dim"), py::arg("dtype") = "fp16",
           py::arg("page_tokens") = 16, py::arg("policy") = "quest", py::arg("budget_tokens") = 512,
           py::arg("sink_pages") = 1, py::arg("window_pages") = 1,
           py::arg("pool_slots_per_head") = 4096, py::arg("summary_slots") = int64_t{65536},
           py::arg("prepare_host_bytes") = int64_t{0}, py::arg("select_threads") = 0,
           py::arg("prefill_to_pool") = false, py::arg("capturable_steps") = false,
           py::arg("selector") = py::dict(), py::arg("tenant") = "decode",
           py::arg("model_id") = "model", py::arg("salt") = "", py::arg("first_layer") = 0,
           py::arg("pin_prompt") = false, py::arg("prefetch") = true, py::arg("verify") = true,
           py::arg("boundary_trigger") = false, py::arg("boundary_threshold") = 0.9f,
           py::arg("layer_thresholds") = std::vector<float>{},
           py::arg("layer_streaming_heads") = std::vector<std::vector<int>>{},
           py::arg("device") = "cpu", py::arg("stream") = py::none(), py::keep_alive<1, 2>(),
           "Creates a worker over `store` (kept alive by the worker). policy: oracle, quest, "
           "lserve, louiskv, ann or streaming; budget_tokens per KV head (a budget covering the "
           "context attends it densely). device 'cpu' (the reference backend) or 'cuda[:N]' "
           "(stream: a torch.cuda.Stream or cudaStream_t int; None: torch's current stream). "
           "summary_slots: quest's page summaries (one per page of every open (sequence, layer)); "
           "prepare_host_bytes: host-tier bytes mapped (and page-locked) at creation, -1 all; "
           "select_threads: threads that select (host policies) and resolve pool slots, the "
           "caller's among them (0: the machine's cores, at most 8); prefill_to_pool: prefill "
           "also copies whole pages into the pool's free slots (never evicting); "
           "capturable_steps: steps between retrievals are planned whole, for CUDA graphs "
           "(StepPlan.capturable).")
      .def("open", &PyDecodeWorker::Open, py::arg("token_ids"),
           "Opens a sequence for a prompt (>= 1 token ids), loading the longest prefix the store "
           "holds for every layer. Returns OpenedSequence; prefill tokens [cached_tokens, n).")
      .def("prefill", &PyDecodeWorker::Prefill, py::arg("seq"), py::arg("layer"), py::arg("k"),
           py::arg("v"),
           "Writes k, v [T, kv_heads, head_dim] of the next T prompt tokens of `layer` (chunks "
           "allowed). Full pages are committed to the store asynchronously.")
      .def("prefill_attend", &PyDecodeWorker::PrefillAttend, py::arg("seq"), py::arg("layer"),
           py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
           "prefill() of k, v [T, kv_heads, head_dim], then writes out [T, q_heads, head_dim] in "
           "place: the causal attention of q [T, q_heads, head_dim] over every earlier token of "
           "the sequence in this layer (the cached prefix, earlier chunks) and the chunk itself; "
           "streaming heads attend sinks + window only.")
      .def("fork", &PyDecodeWorker::Fork, py::arg("parent"),
           "A new sequence sharing everything a fully prefilled `parent` holds; returns its id.")
      .def("close", &PyDecodeWorker::Close, py::arg("seq"),
           "Closes a sequence (its committed pages stay in the store). StatusError NOT_FOUND "
           "for an unknown id.")
      .def("plan", &PyDecodeWorker::Plan, py::arg("seqs"), py::arg("token_ids"),
           "Plans one decode step: seqs (distinct, prefilled) and their newest token ids (one "
           "each). Returns a StepPlan; one plan at a time.")
      .def("attend", &PyDecodeWorker::Attend, py::arg("plan"), py::arg("layer"), py::arg("q"),
           py::arg("k"), py::arg("v"), py::arg("out"),
           "One layer of the planned step: q [B, q_heads, head_dim], k and v [B, kv_heads, "
           "head_dim] of the new tokens; writes out [B, q_heads, head_dim] in place. B is the "
           "plan's batch in its order; each layer once per step. The last axis must be "
           "contiguous.")
      .def("replayed", &PyDecodeWorker::Replayed, py::arg("plan"),
           "A capturable step whose layers ran by replaying a graph captured from an earlier "
           "capturable step's attend calls (same graph_key): every layer counts as attended. "
           "StatusError FAILED_PRECONDITION for a step that is not capturable or whose layers "
           "were attended.")
      .def("finish", &PyDecodeWorker::Finish, py::arg("plan"),
           "Ends the step (every layer attended); returns StepStats.")
      .def("flush", &PyDecodeWorker::Flush,
           "Waits until every page committed so far is in the store.")
      .def("extend", &PyDecodeWorker::Extend, py::arg("seq"), py::arg("token_ids"),
           "Appends tokens to a fully prefilled sequence that ends on a page boundary; every "
           "layer then takes their K/V through prefill / prefill_attend or commit_block.")
      .def("truncate", &PyDecodeWorker::Truncate, py::arg("seq"), py::arg("tokens"),
           "Cuts the sequence back to its first `tokens` tokens (a multiple of page_tokens): the "
           "later pages leave it and the pool (they stay in the store under their keys).")
      .def("attend_block", &PyDecodeWorker::AttendBlock, py::arg("seq"), py::arg("layer"),
           py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
           py::arg("keep_pages") = std::vector<uint8_t>{},
           "A bidirectional block after the sequence's end (a diffusion LM's noisy block): q "
           "[N, q_heads, head_dim] attends the context pages selected for the block's mean "
           "query and the whole block k, v [N, kv_heads, head_dim], no causal mask; writes out "
           "[N, q_heads, head_dim] in place. keep_pages: one flag per block page, 1 = keep the "
           "K/V the last call wrote there. Returns StepStats. The block joins the sequence "
           "through extend + commit_block.")
      .def("commit_block", &PyDecodeWorker::CommitBlock, py::arg("seq"), py::arg("layer"),
           "The layer's block (as attend_block last wrote it) becomes the tokens extend added.")
      .def("length", &PyDecodeWorker::Length, py::arg("seq"), py::arg("layer") = 0,
           "Tokens of a sequence (prompt + generated) as seen by `layer`.")
      .def("page_keys", &PyDecodeWorker::PageKeys, py::arg("seq"), py::arg("layer"),
           "Store keys (128-bit ints, as pagoda.chain_keys gives) of the full pages of (seq, "
           "layer), in order.")
      .def("last_rows", &PyDecodeWorker::LastRows, py::arg("seq"), py::arg("layer"),
           "The pages each KV head of (seq, layer) attended in the last step (natural page ids; "
           "louiskv: its cluster-ordered layout's between its sinks and the prompt's tail).")
      .def("attended_positions", &PyDecodeWorker::AttendedPositions, py::arg("seq"),
           py::arg("layer"),
           "The token positions each KV head of (seq, layer) attended in the last step.")
      .def("stats", &PyDecodeWorker::Stats,
           "{'sequences', 'pool_slots_per_head', 'pool_used', 'pool_evictions', "
           "'pages_committed', 'pages_reused', 'layout_pages', 'pool_bytes', "
           "'summary_table_bytes', 'selector_host_bytes'}.")
      .def_property_readonly("device", &PyDecodeWorker::device)
      .def_property_readonly("stream", &PyDecodeWorker::stream,
                             "The cudaStream_t the worker runs on (0 on the CPU).")
      .def_property_readonly(
          "dtype",
          [](const PyDecodeWorker& w) { return std::string(DTypeName(w.options().layout.dtype)); })
      .def_property_readonly("page_tokens",
                             [](const PyDecodeWorker& w) { return w.options().layout.page_tokens; })
      .def_property_readonly("num_layers",
                             [](const PyDecodeWorker& w) { return w.options().num_layers; });
}

}  // namespace pagoda::python
