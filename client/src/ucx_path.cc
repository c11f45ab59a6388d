#include "ucx_path.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "pagoda/transport/remote_key.h"
#include "pagoda/transport/transport.h"
#include "remote_path.h"

namespace pagoda::client_internal {

struct UcxPath::Connection {
  std::unique_ptr<TransportEndpoint> endpoint;
  std::unique_ptr<RemoteMemory> arena;  // destroyed before the endpoint (declared after it)
  ~Connection() { arena.reset(); }
};

UcxPath::UcxPath(v1::Pagoda::Stub* stub, std::string tenant,
                 std::function<void(grpc::ClientContext*)> prepare)
    : stub_(stub), tenant_(std::move(tenant)), prepare_(std::move(prepare)) {}

UcxPath::~UcxPath() {
  absl::MutexLock l(&mu_);
  conn_.reset();
}

absl::StatusOr<std::unique_ptr<UcxPath>> UcxPath::Open(
    v1::Pagoda::Stub* stub, std::string tenant, std::function<void(grpc::ClientContext*)> prepare,
    absl::Duration op_timeout) {
  std::unique_ptr<UcxPath> p(new UcxPath(stub, std::move(tenant), std::move(prepare)));
  TransportOptions o;
  o.op_timeout = op_timeout;
  absl::StatusOr<std::unique_ptr<Transport>> t = Transport::Create(o);
  if (!t.ok()) return t.status();
  p->transport_ = std::move(*t);
  absl::StatusOr<std::shared_ptr<Connection>> c = p->Connect();
  if (!c.ok()) return c.status();
  absl::MutexLock l(&p->mu_);
  p->conn_ = std::move(*c);
  return p;
}

absl::StatusOr<std::shared_ptr<UcxPath::Connection>> UcxPath::Connect() {
  grpc::ClientContext ctx;
  prepare_(&ctx);
  v1::UcxHelloRequest req;
  req.set_tenant(tenant_);
  v1::UcxHelloResponse resp;
  absl::Status s = FromGrpc(stub_->UcxHello(&ctx, req, &resp));
  if (absl::IsUnimplemented(s)) {
    return absl::FailedPreconditionError("the server does not know the UCX path (older pagodad)");
  }
  if (!s.ok()) return s;
  absl::StatusOr<std::string> address = DecodePeerAddress(resp.worker_address());
  if (!address.ok()) return address.status();
  auto c = std::make_shared<Connection>();
  absl::StatusOr<std::unique_ptr<TransportEndpoint>> ep = transport_->Connect(*address);
  if (!ep.ok()) return ep.status();
  c->endpoint = std::move(*ep);
  absl::StatusOr<std::unique_ptr<RemoteMemory>> arena =
      c->endpoint->ImportRemoteKey(resp.arena_key());
  if (!arena.ok()) return arena.status();
  if ((*arena)->length() != resp.arena_bytes()) {
    return absl::InternalError("UCX path: the arena key does not match the arena size");
  }
  c->arena = std::move(*arena);
  return c;
}

absl::StatusOr<std::shared_ptr<UcxPath::Connection>> UcxPath::Conn() {
  absl::MutexLock l(&mu_);
  if (conn_ != nullptr && conn_->endpoint->health().ok()) return conn_;
  absl::StatusOr<std::shared_ptr<Connection>> c = Connect();
  if (!c.ok()) return c.status();
  conn_ = *c;
  return conn_;
}

std::vector<absl::Status> UcxPath::Put(absl::Span<const PutPage> pages) {
  if (pages.empty()) return {};
  const size_t n = pages.size();
  absl::StatusOr<std::shared_ptr<Connection>> conn = Conn();
  if (!conn.ok()) return std::vector<absl::Status>(n, conn.status());

  // 1. Reserve a slot per page (the checksum travels now; the server checks it at commit).
  v1::PutBegin begin;
  begin.set_tenant(tenant_);
  for (const PutPage& p : pages) {
    v1::PutPage* pp = begin.add_pages();
    pp->mutable_key()->set_hi(p.key.hi);
    pp->mutable_key()->set_lo(p.key.lo);
    pp->set_layout_id(p.layout);
    pp->set_size(p.bytes.size());
    pp->set_checksum(PageChecksum(p.bytes.data(), p.bytes.size()));
  }
  v1::UcxReserveResponse reserved;
  {
    grpc::ClientContext ctx;
    prepare_(&ctx);
    absl::Status s = FromGrpc(stub_->UcxReserve(&ctx, begin, &reserved));
    if (s.ok() && reserved.slots_size() != static_cast<int>(n)) {
      s = absl::InternalError("Put: the server answered for a different number of pages");
    }
    if (!s.ok()) return std::vector<absl::Status>(n, s);
  }

  // 2. Write the bytes of every reserved page into its slot, one batch.
  std::vector<absl::Status> out(n);
  std::vector<TransferOp> ops;
  std::vector<size_t> op_page;
  for (size_t i = 0; i < n; ++i) {
    const v1::UcxSlot& slot = reserved.slots(static_cast<int>(i));
    out[i] = FromPageStatus(slot.status());
    if (!out[i].ok()) continue;
    ops.push_back(TransferOp{const_cast<uint8_t*>(pages[i].bytes.data()), slot.offset(),
                             pages[i].bytes.size()});
    op_page.push_back(i);
  }
  if (ops.empty()) return out;
  std::vector<absl::Status> written(ops.size());
  absl::StatusOr<TransferFuture> f =
      (*conn)->endpoint->Post(TransferDirection::kWrite, *(*conn)->arena, ops);
  if (f.ok()) {
    written = f->Wait();
  } else {
    written.assign(ops.size(), f.status());
  }

  // 3. Commit what was written (the server verifies each slot), abort the rest.
  v1::UcxCommitRequest commit;
  commit.set_tenant(tenant_);
  std::vector<size_t> commit_page;
  for (size_t j = 0; j < ops.size(); ++j) {
    const uint64_t handle = reserved.slots(static_cast<int>(op_page[j])).handle();
    if (written[j].ok()) {
      commit.add_commit(handle);
      commit_page.push_back(op_page[j]);
    } else {
      commit.add_abort(handle);
      out[op_page[j]] = absl::Status(written[j].code(),
                                     absl::StrCat("Put: UCX write failed: ", written[j].message()));
    }
  }
  grpc::ClientContext ctx;
  prepare_(&ctx);
  v1::PutResponse committed;
  absl::Status s = FromGrpc(stub_->UcxCommit(&ctx, commit, &committed));
  if (s.ok() && committed.results_size() != static_cast<int>(commit_page.size())) {
    s = absl::InternalError("Put: the server answered for a different number of pages");
  }
  for (size_t j = 0; j < commit_page.size(); ++j) {
    out[commit_page[j]] = s.ok() ? FromPageStatus(committed.results(static_cast<int>(j))) : s;
  }
  return out;
}

std::vector<GetResult> UcxPath::GetOnce(absl::Span<const GetPage> pages) {
  const size_t n = pages.size();
  std::vector<GetResult> out(n);
  absl::StatusOr<std::shared_ptr<Connection>> conn = Conn();
  if (!conn.ok()) {
    for (GetResult& r : out) r.status = conn.status();
    return out;
  }
  // 1. Lease the slots.
  v1::UcxAcquireRequest req;
  req.set_tenant(tenant_);
  for (const GetPage& p : pages) {
    v1::PageKey* k = req.add_keys();
    k->set_hi(p.key.hi);
    k->set_lo(p.key.lo);
  }
  v1::UcxAcquireResponse leased;
  {
    grpc::ClientContext ctx;
    prepare_(&ctx);
    absl::Status s = FromGrpc(stub_->UcxAcquire(&ctx, req, &leased));
    if (s.ok() && leased.leases_size() != static_cast<int>(n)) {
      s = absl::InternalError("Get: the server answered for a different number of pages");
    }
    if (!s.ok()) {
      for (GetResult& r : out) r.status = s;
      return out;
    }
  }
  // 2. Read every leased slot straight into the caller's buffer, one batch.
  v1::UcxReleaseRequest release;
  release.set_tenant(tenant_);
  std::vector<TransferOp> ops;
  std::vector<size_t> op_page;
  for (size_t i = 0; i < n; ++i) {
    const v1::UcxLease& l = leased.leases(static_cast<int>(i));
    out[i].status = FromPageStatus(l.status());
    if (!out[i].status.ok()) continue;
    release.add_leases(l.lease());
    if (pages[i].out.size() < l.size()) {
      out[i].status = absl::InvalidArgumentError(absl::StrCat(
          "output buffer of ", pages[i].out.size(), " bytes for a ", l.size(), "-byte page"));
      continue;
    }
    ops.push_back(TransferOp{pages[i].out.data(), l.offset(), l.size()});
    op_page.push_back(i);
  }
  if (!ops.empty()) {
    std::vector<absl::Status> read(ops.size());
    absl::StatusOr<TransferFuture> f =
        (*conn)->endpoint->Post(TransferDirection::kRead, *(*conn)->arena, ops);
    if (f.ok()) {
      read = f->Wait();
    } else {
      read.assign(ops.size(), f.status());
    }
    // 3. Only bytes whose checksum matches the lease's are handed out.
    for (size_t j = 0; j < ops.size(); ++j) {
      const size_t i = op_page[j];
      const v1::UcxLease& l = leased.leases(static_cast<int>(i));
      if (!read[j].ok()) {
        out[i].status =
            absl::Status(read[j].code(), absl::StrCat("Get: UCX read failed: ", read[j].message()));
      } else if (PageChecksum(pages[i].out.data(), l.size()) != l.checksum()) {
        out[i].status = absl::DataLossError(
            "Get: checksum mismatch of the bytes read over UCX (lease expired?)");
      } else {
        out[i].layout = l.layout_id();
        out[i].size = l.size();
      }
    }
  }
  // 4. Release the leases without waiting for the answer (the bytes are already verified; a
  // lease whose release is lost ends at its expiry anyway).
  if (release.leases_size() > 0) {
    struct Call {
      grpc::ClientContext ctx;
      v1::UcxReleaseRequest request;
      v1::BatchResponse response;
    };
    auto* call = new Call;
    prepare_(&call->ctx);
    call->request = std::move(release);
    stub_->async()->UcxRelease(&call->ctx, &call->request, &call->response,
                               [call](grpc::Status) { delete call; });
  }
  return out;
}

std::vector<GetResult> UcxPath::Get(absl::Span<const GetPage> pages) {
  if (pages.empty()) return {};
  std::vector<GetResult> out = GetOnce(pages);
  // A page that changed under an expired lease is read again (once); if it still does not
  // verify, the caller gets DataLoss, never the bytes.
  for (size_t i = 0; i < pages.size(); ++i) {
    if (absl::IsDataLoss(out[i].status)) out[i] = GetOnce(pages.subspan(i, 1))[0];
  }
  return out;
}

}  // namespace pagoda::client_internal
