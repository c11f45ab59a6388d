#include "transport/src/ucx_transport.h"

#include <ucp/api/ucp.h>

#include <limits>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "pagoda/transport/remote_key.h"
#include "transport/src/ucx_status.h"
#include "transport/src/ucx_worker.h"

namespace pagoda::internal {
namespace {

constexpr size_t kFlushOp = std::numeric_limits<size_t>::max();

class UcxCore;
struct EndpointState;

// One posted batch. Lives on the progress thread from posting until every UCX request it issued
// has called back (`pending` reaches 0), which may be after its results were already decided
// (`finished`) by an endpoint failure.
struct Batch {
  struct Op {
    Batch* batch;
    size_t index;
  };
  std::shared_ptr<TransferState> state;
  std::shared_ptr<EndpointState> ep;
  TransferDirection direction;
  std::vector<TransferOp> ops;
  std::vector<Op> op_ctx;       // user_data of each request
  std::vector<bool> completed;  // op i called back
  Op flush_ctx{this, kFlushOp};
  size_t pending = 0;
  bool finished = false;
  absl::Time deadline;
};

struct RkeyState {
  ucp_rkey_h rkey = nullptr;  // progress thread only; null once destroyed
};

// Progress-thread state of one endpoint.
struct EndpointState : std::enable_shared_from_this<EndpointState> {
  UcxCore* core = nullptr;
  ucp_ep_h ep = nullptr;  // null once closed
  absl::flat_hash_set<Batch*> batches;
  std::vector<std::shared_ptr<RkeyState>> rkeys;

  mutable absl::Mutex mu;
  absl::Status failure ABSL_GUARDED_BY(mu);

  absl::Status health() const {
    absl::MutexLock lock(&mu);
    return failure;
  }
  void SetFailure(absl::Status s) {
    absl::MutexLock lock(&mu);
    if (failure.ok()) failure = std::move(s);
  }
};

void FinishBatch(Batch* b) {
  if (b->finished) return;
  b->finished = true;
  b->state->Finish();
}

void ReleaseOp(Batch* b);

// Decides the results of every live batch of `st` with `why` (ops already read stay OK; writes not
// yet flushed fail) and closes the endpoint forcibly.
void FailEndpoint(EndpointState* st, absl::Status why);
void RetireEndpoint(EndpointState* st, const char* why);

class UcxCore {
 public:
  UcxCore(ucp_context_h context, bool cuda_memory, TransportOptions options, std::string tls)
      : context_(context), cuda_memory_(cuda_memory), options_(options), tls_(std::move(tls)) {}
  ~UcxCore() {
    if (context_ != nullptr) ucp_cleanup(context_);
  }

  absl::Status Start() {
    auto w = UcxWorker::Create(context_, options_.spin_before_sleep);
    if (!w.ok()) return w.status();
    worker_ = std::move(*w);
    worker_raw_ = worker_.get();
    worker_->Run([this] { worker_->SetTick([this](absl::Time now) { Tick(now); }); });
    absl::MutexLock lock(&life_mu_);
    alive_ = true;
    return absl::OkStatus();
  }

  // Runs `fn` on the progress thread unless the core was shut down; false then.
  bool RunIfAlive(absl::AnyInvocable<void() &&> fn) {
    absl::ReaderMutexLock lock(&life_mu_);
    if (!alive_) return false;
    worker_->Run(std::move(fn));
    return true;
  }
  bool PostIfAlive(absl::AnyInvocable<void() &&> fn) {
    absl::ReaderMutexLock lock(&life_mu_);
    if (!alive_) return false;
    worker_->Post(std::move(fn));
    return true;
  }

  // Closes every endpoint, drains, stops the progress thread and destroys the worker. Registrations
  // keep the context until they go.
  void Shutdown() {
    absl::MutexLock lock(&life_mu_);
    if (!alive_) return;
    alive_ = false;
    std::vector<EndpointState*> eps(endpoints_.begin(), endpoints_.end());
    worker_->Run([this, &eps] {
      for (EndpointState* st : eps) RetireEndpoint(st, "transport shut down");
      // Let purged requests call back so their batches are freed.
      worker_->ProgressUntil(
          [&] {
            for (EndpointState* st : eps) {
              if (!st->batches.empty()) return false;
            }
            return true;
          },
          absl::Now() + absl::Seconds(1));
    });
    // Destroying the UCP worker purges requests still pending on force-closed endpoints, and their
    // callbacks reach worker() (busy counter): keep the raw pointer valid while it is destroyed.
    delete worker_.release();
    worker_raw_ = nullptr;
    // The worker is gone, so no callback can reach batches that were still pending.
    for (EndpointState* st : eps) {
      for (Batch* b : st->batches) delete b;
      st->batches.clear();
    }
    endpoints_.clear();
  }

  ucp_context_h context() const { return context_; }
  UcxWorker& worker() { return *worker_raw_; }
  bool cuda_memory() const { return cuda_memory_; }
  const TransportOptions& options() const { return options_; }
  const std::string& tls() const { return tls_; }

  // Progress thread only.
  void AddEndpoint(EndpointState* st) { endpoints_.insert(st); }
  void RemoveEndpoint(EndpointState* st) { endpoints_.erase(st); }

 private:
  void Tick(absl::Time now) {
    std::vector<EndpointState*> expired;
    for (EndpointState* st : endpoints_) {
      for (Batch* b : st->batches) {
        if (!b->finished && now > b->deadline) {
          expired.push_back(st);
          break;
        }
      }
    }
    for (EndpointState* st : expired) {
      FailEndpoint(st, absl::DeadlineExceededError(absl::StrCat(
                           "transfer batch not complete after ",
                           absl::FormatDuration(options_.op_timeout), "; endpoint closed")));
    }
  }

  ucp_context_h context_;
  bool cuda_memory_;
  TransportOptions options_;
  std::string tls_;
  std::unique_ptr<UcxWorker> worker_;
  UcxWorker* worker_raw_ = nullptr;  // == worker_.get(), also while the worker is destroyed
  absl::flat_hash_set<EndpointState*> endpoints_;  // progress thread only

  absl::Mutex life_mu_;
  bool alive_ ABSL_GUARDED_BY(life_mu_) = false;
};

void DestroyRkeys(EndpointState* st) {
  for (auto& rk : st->rkeys) {
    if (rk->rkey != nullptr) {
      ucp_rkey_destroy(rk->rkey);
      rk->rkey = nullptr;
    }
  }
  st->rkeys.clear();
}

// Closes the UCX endpoint, then destroys its rkeys (in-flight requests may use them until the
// close has purged them).
void CloseEndpoint(EndpointState* st, bool force) {
  if (st->ep == nullptr) {
    DestroyRkeys(st);
    return;
  }
  ucp_ep_h ep = st->ep;
  st->ep = nullptr;
  st->core->RemoveEndpoint(st);
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
  ucs_status_ptr_t req = ucp_ep_close_nbx(ep, &param);
  if (req != nullptr && !UCS_PTR_IS_ERR(req)) {
    UcxWorker& w = st->core->worker();
    bool done = w.ProgressUntil([req] { return ucp_request_check_status(req) != UCS_INPROGRESS; },
                                absl::Now() + absl::Seconds(2));
    (void)done;  // on timeout UCX finishes the close in the background
    ucp_request_free(req);
  }
  DestroyRkeys(st);
}

void FailEndpoint(EndpointState* st, absl::Status why) {
  st->SetFailure(why);
  absl::Status failure = st->health();
  for (Batch* b : st->batches) {
    if (b->finished) continue;
    if (b->direction == TransferDirection::kWrite) {
      b->state->FailAll(failure);  // not flushed: none is known to have landed
    } else {
      for (size_t i = 0; i < b->ops.size(); ++i) {
        if (!b->completed[i]) b->state->SetResult(i, failure);
      }
    }
    FinishBatch(b);
  }
  CloseEndpoint(st, /*force=*/true);
}

// Ends an endpoint on purpose. Batches still in flight fail (Cancelled); a healthy endpoint is
// closed gracefully (flushed, the peer told), because a forced close can leave the peer's UCX
// finishing a wire-up towards an endpoint that vanished.
void RetireEndpoint(EndpointState* st, const char* why) {
  bool healthy = st->health().ok() && st->ep != nullptr;
  st->SetFailure(absl::CancelledError(why));
  if (!st->batches.empty() || !healthy) {
    FailEndpoint(st, absl::CancelledError(why));
  } else {
    CloseEndpoint(st, /*force=*/false);
  }
}

// Marks the endpoint failed now and closes it from the queue (closing inside a UCX callback is not
// allowed).
void ScheduleFail(EndpointState* st, absl::Status why) {
  st->SetFailure(why);
  st->core->worker().Post([weak = st->weak_from_this(), why] {
    auto locked = weak.lock();
    if (locked != nullptr && locked->ep != nullptr) FailEndpoint(locked.get(), why);
  });
}

void CompleteOp(Batch::Op* op, ucs_status_t status) {
  Batch* b = op->batch;
  if (!b->finished && status != UCS_OK) {
    absl::Status err = FromUcs(status, op->index == kFlushOp                      ? "flush"
                                       : b->direction == TransferDirection::kRead ? "get"
                                                                                  : "put");
    if (op->index == kFlushOp) {
      b->state->FailAll(err);  // no put of the batch is known to have landed
    } else {
      b->state->SetResult(op->index, err);
    }
    // UCX fails RMA ops only when the connection is gone; don't wait for the error handler.
    if (b->ep->ep != nullptr) ScheduleFail(b->ep.get(), absl::UnavailableError(err.message()));
  }
  if (op->index != kFlushOp) b->completed[op->index] = true;
  ReleaseOp(b);
}

void ReleaseOp(Batch* b) {
  if (--b->pending > 0) return;
  FinishBatch(b);
  b->ep->batches.erase(b);
  b->ep->core->worker().AddBusy(-1);
  delete b;
}

void OnRequestDone(void* request, ucs_status_t status, void* user_data) {
  ucp_request_free(request);
  CompleteOp(static_cast<Batch::Op*>(user_data), status);
}

void OnEndpointError(void* arg, ucp_ep_h /*ep*/, ucs_status_t status) {
  auto* st = static_cast<EndpointState*>(arg);
  ScheduleFail(st, absl::UnavailableError(
                       absl::StrCat("peer connection lost: ", FromUcs(status, "ep").message())));
}

// Posts every op of `b` (progress thread).
void Launch(Batch* b, ucp_rkey_h rkey, uint64_t remote_base) {
  EndpointState* st = b->ep.get();
  st->batches.insert(b);
  st->core->worker().AddBusy(1);
  b->pending = 1;  // the launch itself, released at the end
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  param.cb.send = &OnRequestDone;
  for (size_t i = 0; i < b->ops.size() && st->ep != nullptr; ++i) {
    const TransferOp& op = b->ops[i];
    param.user_data = &b->op_ctx[i];
    ++b->pending;
    ucs_status_ptr_t req =
        b->direction == TransferDirection::kRead
            ? ucp_get_nbx(st->ep, op.local, op.length, remote_base + op.remote_offset, rkey, &param)
            : ucp_put_nbx(st->ep, op.local, op.length, remote_base + op.remote_offset, rkey,
                          &param);
    if (req == nullptr) {
      CompleteOp(&b->op_ctx[i], UCS_OK);
    } else if (UCS_PTR_IS_ERR(req)) {
      CompleteOp(&b->op_ctx[i], UCS_PTR_STATUS(req));
    }
  }
  if (b->direction == TransferDirection::kWrite && st->ep != nullptr && !b->finished) {
    // Puts complete locally; only a flush says the bytes are in remote memory.
    param.user_data = &b->flush_ctx;
    ++b->pending;
    ucs_status_ptr_t req = ucp_ep_flush_nbx(st->ep, &param);
    if (req == nullptr) {
      CompleteOp(&b->flush_ctx, UCS_OK);
    } else if (UCS_PTR_IS_ERR(req)) {
      CompleteOp(&b->flush_ctx, UCS_PTR_STATUS(req));
    }
  }
  ReleaseOp(b);
}

class UcxRegisteredMemory final : public RegisteredMemory {
 public:
  // `memh` either registers caller memory or owns memory UCX allocated (Transport::Allocate).
  UcxRegisteredMemory(std::shared_ptr<UcxCore> core, ucp_mem_h memh, void* base, size_t length,
                      MemoryKind kind)
      : core_(std::move(core)), memh_(memh), base_(base), length_(length), kind_(kind) {}
  ~UcxRegisteredMemory() override { ucp_mem_unmap(core_->context(), memh_); }

  void* base() const override { return base_; }
  size_t length() const override { return length_; }
  MemoryKind kind() const override { return kind_; }

  absl::StatusOr<std::string> PackRemoteKey() const override {
    void* buf = nullptr;
    size_t size = 0;
    ucs_status_t s = ucp_rkey_pack(core_->context(), memh_, &buf, &size);
    if (s != UCS_OK) return FromUcs(s, "ucp_rkey_pack");
    RemoteKey key;
    key.kind = kind_;
    key.base = reinterpret_cast<uint64_t>(base_);
    key.length = length_;
    key.transport_key.assign(static_cast<const char*>(buf), size);
    ucp_rkey_buffer_release(buf);
    return EncodeRemoteKey(key);
  }

 private:
  std::shared_ptr<UcxCore> core_;
  ucp_mem_h memh_;
  void* base_;
  size_t length_;
  MemoryKind kind_;
};

class UcxRemoteMemory final : public RemoteMemory {
 public:
  UcxRemoteMemory(std::shared_ptr<UcxCore> core, std::shared_ptr<EndpointState> ep,
                  std::shared_ptr<RkeyState> rkey, const RemoteKey& key)
      : core_(std::move(core)),
        ep_(std::move(ep)),
        rkey_(std::move(rkey)),
        base_(key.base),
        length_(key.length),
        kind_(key.kind) {}
  ~UcxRemoteMemory() override {
    core_->PostIfAlive([rk = rkey_, ep = ep_] {
      if (rk->rkey == nullptr) return;  // the endpoint closed and destroyed it already
      ucp_rkey_destroy(rk->rkey);
      rk->rkey = nullptr;
      auto& v = ep->rkeys;
      for (size_t i = 0; i < v.size(); ++i) {
        if (v[i] == rk) {
          v.erase(v.begin() + i);
          break;
        }
      }
    });
  }

  uint64_t base() const override { return base_; }
  uint64_t length() const override { return length_; }
  MemoryKind kind() const override { return kind_; }

  const std::shared_ptr<EndpointState>& endpoint() const { return ep_; }
  const std::shared_ptr<RkeyState>& rkey() const { return rkey_; }

 private:
  std::shared_ptr<UcxCore> core_;
  std::shared_ptr<EndpointState> ep_;
  std::shared_ptr<RkeyState> rkey_;
  uint64_t base_;
  uint64_t length_;
  MemoryKind kind_;
};

class UcxEndpoint final : public TransportEndpoint {
 public:
  UcxEndpoint(std::shared_ptr<UcxCore> core, std::shared_ptr<EndpointState> st)
      : core_(std::move(core)), st_(std::move(st)) {}
  ~UcxEndpoint() override {
    core_->RunIfAlive([st = st_.get()] { RetireEndpoint(st, "endpoint destroyed"); });
  }

  absl::StatusOr<std::unique_ptr<RemoteMemory>> ImportRemoteKey(std::string_view bytes) override {
    auto key = DecodeRemoteKey(bytes);
    if (!key.ok()) return key.status();
    if (key->kind == MemoryKind::kCuda && !core_->cuda_memory()) {
      return absl::FailedPreconditionError(
          "remote key names CUDA memory, which this UCX build cannot reach; use the host-staged "
          "path");
    }
    auto rk = std::make_shared<RkeyState>();
    absl::Status result;
    bool alive = core_->RunIfAlive([&] {
      if (st_->ep == nullptr) {
        result = st_->health();
        if (result.ok()) result = absl::UnavailableError("endpoint closed");
        return;
      }
      ucs_status_t s = ucp_ep_rkey_unpack(st_->ep, key->transport_key.data(), &rk->rkey);
      if (s != UCS_OK) {
        rk->rkey = nullptr;
        result = absl::InvalidArgumentError(
            absl::StrCat("remote key rejected by UCX: ", ucs_status_string(s)));
        return;
      }
      st_->rkeys.push_back(rk);
    });
    if (!alive) return absl::FailedPreconditionError("transport shut down");
    if (!result.ok()) return result;
    return std::make_unique<UcxRemoteMemory>(core_, st_, std::move(rk), *key);
  }

  absl::StatusOr<TransferFuture> Post(TransferDirection direction, const RemoteMemory& remote,
                                      absl::Span<const TransferOp> ops,
                                      TransferCallback callback) override {
    auto* rm = dynamic_cast<const UcxRemoteMemory*>(&remote);
    if (rm == nullptr || rm->endpoint() != st_) {
      return absl::InvalidArgumentError("remote memory was imported by another endpoint");
    }
    if (direction != TransferDirection::kRead && direction != TransferDirection::kWrite) {
      return absl::InvalidArgumentError("unknown transfer direction");
    }
    if (ops.empty()) return absl::InvalidArgumentError("empty transfer batch");
    for (size_t i = 0; i < ops.size(); ++i) {
      const TransferOp& op = ops[i];
      if (op.local == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat("op ", i, ": null local buffer"));
      }
      if (op.length == 0)
        return absl::InvalidArgumentError(absl::StrCat("op ", i, ": zero length"));
      if (op.remote_offset > rm->length() || op.length > rm->length() - op.remote_offset) {
        return absl::OutOfRangeError(absl::StrCat("op ", i, ": remote range [", op.remote_offset,
                                                  ", +", op.length, ") outside the ", rm->length(),
                                                  "-byte registration"));
      }
    }
    if (absl::Status h = st_->health(); !h.ok()) {
      return absl::UnavailableError(absl::StrCat("endpoint failed: ", h.message()));
    }
    auto state = std::make_shared<TransferState>(ops.size(), std::move(callback));
    auto* b = new Batch;
    b->state = state;
    b->ep = st_;
    b->direction = direction;
    b->ops.assign(ops.begin(), ops.end());
    b->completed.assign(ops.size(), false);
    b->op_ctx.reserve(ops.size());
    for (size_t i = 0; i < ops.size(); ++i) b->op_ctx.push_back({b, i});
    b->deadline = absl::Now() + core_->options().op_timeout;
    bool alive = core_->PostIfAlive([b, rk = rm->rkey(), base = rm->base()] {
      if (b->ep->ep == nullptr || rk->rkey == nullptr) {
        absl::Status h = b->ep->health();
        b->state->FailAll(h.ok() ? absl::UnavailableError("endpoint closed") : h);
        b->state->Finish();
        delete b;
        return;
      }
      Launch(b, rk->rkey, base);
    });
    if (!alive) {
      delete b;
      return absl::FailedPreconditionError("transport shut down");
    }
    return TransferFuture(std::move(state));
  }

  absl::Status health() const override { return st_->health(); }

 private:
  std::shared_ptr<UcxCore> core_;
  std::shared_ptr<EndpointState> st_;
};

class UcxTransport final : public Transport {
 public:
  explicit UcxTransport(std::shared_ptr<UcxCore> core) : core_(std::move(core)) {}
  ~UcxTransport() override { core_->Shutdown(); }

  std::string name() const override { return absl::StrCat("ucx(", core_->tls(), ")"); }

  absl::StatusOr<std::unique_ptr<RegisteredMemory>> Register(void* addr, size_t length,
                                                             MemoryKind kind) override {
    if (addr == nullptr) return absl::InvalidArgumentError("Register: null address");
    if (length == 0) return absl::InvalidArgumentError("Register: zero length");
    if (reinterpret_cast<uintptr_t>(addr) + length < reinterpret_cast<uintptr_t>(addr)) {
      return absl::InvalidArgumentError("Register: range wraps the address space");
    }
    if (kind != MemoryKind::kHost && kind != MemoryKind::kCuda) {
      return absl::InvalidArgumentError("Register: unknown memory kind");
    }
    if (kind == MemoryKind::kCuda && !core_->cuda_memory()) {
      return absl::FailedPreconditionError(
          "Register: this UCX build cannot register CUDA memory; use the host-staged path "
          "(staged_gpu.h)");
    }
    ucp_mem_map_params_t params{};
    params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                        UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
    params.address = addr;
    params.length = length;
    params.memory_type = kind == MemoryKind::kCuda ? UCS_MEMORY_TYPE_CUDA : UCS_MEMORY_TYPE_HOST;
    ucp_mem_h memh = nullptr;
    ucs_status_t s = ucp_mem_map(core_->context(), &params, &memh);
    if (s != UCS_OK) return FromUcs(s, "ucp_mem_map");
    return std::make_unique<UcxRegisteredMemory>(core_, memh, addr, length, kind);
  }

  absl::StatusOr<std::unique_ptr<RegisteredMemory>> Allocate(size_t length) override {
    if (length == 0) return absl::InvalidArgumentError("Allocate: zero length");
    ucp_mem_map_params_t params{};
    params.field_mask = UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_FLAGS;
    params.length = length;
    params.flags = UCP_MEM_MAP_ALLOCATE;
    ucp_mem_h memh = nullptr;
    ucs_status_t s = ucp_mem_map(core_->context(), &params, &memh);
    if (s != UCS_OK) return FromUcs(s, "ucp_mem_map(ALLOCATE)");
    ucp_mem_attr_t attr{};
    attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
    s = ucp_mem_query(memh, &attr);
    if (s != UCS_OK) {
      ucp_mem_unmap(core_->context(), memh);
      return FromUcs(s, "ucp_mem_query");
    }
    return std::make_unique<UcxRegisteredMemory>(core_, memh, attr.address, length,
                                                 MemoryKind::kHost);
  }

  std::string address() const override { return EncodePeerAddress(core_->worker().address()); }

  absl::StatusOr<std::unique_ptr<TransportEndpoint>> Connect(
      std::string_view peer_address) override {
    auto addr = DecodePeerAddress(peer_address);
    if (!addr.ok()) return addr.status();
    auto st = std::make_shared<EndpointState>();
    st->core = core_.get();
    absl::Status result;
    bool alive = core_->RunIfAlive([&] {
      ucp_ep_params_t params{};
      params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                          UCP_EP_PARAM_FIELD_ERR_HANDLER;
      params.address = reinterpret_cast<const ucp_address_t*>(addr->data());
      params.err_mode = core_->options().detect_peer_failure ? UCP_ERR_HANDLING_MODE_PEER
                                                             : UCP_ERR_HANDLING_MODE_NONE;
      params.err_handler.cb = &OnEndpointError;
      params.err_handler.arg = st.get();
      ucs_status_t s = ucp_ep_create(core_->worker().handle(), &params, &st->ep);
      if (s != UCS_OK) {
        st->ep = nullptr;
        result = FromUcs(s, "ucp_ep_create");
        return;
      }
      core_->AddEndpoint(st.get());
      // Wire the connection up now, so an unreachable peer fails here rather than mid-batch.
      ucp_request_param_t fp{};
      ucs_status_ptr_t req = ucp_ep_flush_nbx(st->ep, &fp);
      ucs_status_t fs = UCS_OK;
      if (UCS_PTR_IS_ERR(req)) {
        fs = UCS_PTR_STATUS(req);
      } else if (req != nullptr) {
        bool done = core_->worker().ProgressUntil(
            [req] { return ucp_request_check_status(req) != UCS_INPROGRESS; },
            absl::Now() + core_->options().op_timeout);
        fs = done ? ucp_request_check_status(req) : UCS_ERR_TIMED_OUT;
        ucp_request_free(req);
      }
      if (fs != UCS_OK) {
        result = absl::UnavailableError(
            absl::StrCat("cannot reach peer: ", FromUcs(fs, "connect").message()));
        st->SetFailure(result);
        CloseEndpoint(st.get(), /*force=*/true);
      }
    });
    if (!alive) return absl::FailedPreconditionError("transport shut down");
    if (!result.ok()) return result;
    return std::make_unique<UcxEndpoint>(core_, std::move(st));
  }

 private:
  std::shared_ptr<UcxCore> core_;
};

}  // namespace

bool UcxSupportsCudaMemory() {
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = UCP_FEATURE_RMA;
  ucp_context_h ctx = nullptr;
  if (ucp_init(&params, nullptr, &ctx) != UCS_OK) return false;
  ucp_context_attr_t attr{};
  attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
  bool cuda = ucp_context_query(ctx, &attr) == UCS_OK &&
              (attr.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;
  ucp_cleanup(ctx);
  return cuda;
}

absl::StatusOr<std::unique_ptr<Transport>> CreateUcxTransport(const TransportOptions& options,
                                                              const std::string& tls) {
  ucp_config_t* config = nullptr;
  ucs_status_t s = ucp_config_read(nullptr, nullptr, &config);
  if (s != UCS_OK) return FromUcs(s, "ucp_config_read");
  s = ucp_config_modify(config, "TLS", tls.c_str());
  if (s != UCS_OK) {
    ucp_config_release(config);
    return absl::InvalidArgumentError(
        absl::StrCat("UCX_TLS \"", tls, "\" rejected: ", ucs_status_string(s)));
  }
  if (!options.net_devices.empty()) {
    s = ucp_config_modify(config, "NET_DEVICES", options.net_devices.c_str());
    if (s != UCS_OK) {
      ucp_config_release(config);
      return absl::InvalidArgumentError(absl::StrCat("UCX_NET_DEVICES \"", options.net_devices,
                                                     "\" rejected: ", ucs_status_string(s)));
    }
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP;
  params.mt_workers_shared = 1;  // registrations happen on caller threads
  ucp_context_h context = nullptr;
  s = ucp_init(&params, config, &context);
  ucp_config_release(config);
  if (s != UCS_OK) return FromUcs(s, absl::StrCat("ucp_init with UCX_TLS=", tls));
  ucp_context_attr_t attr{};
  attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
  bool cuda = ucp_context_query(context, &attr) == UCS_OK &&
              (attr.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;
  auto core = std::make_shared<UcxCore>(context, cuda, options, tls);
  if (absl::Status st = core->Start(); !st.ok()) return st;
  return std::make_unique<UcxTransport>(std::move(core));
}

}  // namespace pagoda::internal
