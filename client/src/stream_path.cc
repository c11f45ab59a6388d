#include "stream_path.h"

#include <sys/socket.h>
#include <unistd.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "pagoda/service/stream_wire.h"
#include "remote_path.h"

namespace pagoda::client_internal {

namespace wire = ::pagoda::stream;

namespace {
constexpr size_t kMaxIdle = 16;  // pooled connections kept open between batches
}  // namespace

struct StreamPath::Conn {
  int fd = -1;
  std::string ticket;
  ~Conn() {
    if (fd >= 0) close(fd);
  }
};

StreamPath::StreamPath(v1::Pagoda::Stub* stub, std::string tenant,
                       std::function<void(grpc::ClientContext*)> prepare, std::string host,
                       int port, uint64_t instance_id, absl::Duration io_timeout)
    : stub_(stub),
      tenant_(std::move(tenant)),
      prepare_(std::move(prepare)),
      host_(std::move(host)),
      port_(port),
      instance_id_(instance_id),
      io_timeout_(io_timeout) {}

StreamPath::~StreamPath() = default;

std::string StreamPath::TargetHost(const std::string& target) {
  std::string t = target;
  for (const char* scheme : {"dns:///", "ipv4:", "ipv6:"}) {
    if (t.rfind(scheme, 0) == 0) t = t.substr(std::string(scheme).size());
  }
  if (!t.empty() && t[0] == '[') {
    const size_t e = t.find(']');
    return e == std::string::npos ? "" : t.substr(1, e - 1);
  }
  const size_t colon = t.rfind(':');
  if (colon == std::string::npos || colon == 0) return "";
  return t.substr(0, colon);
}

absl::StatusOr<std::unique_ptr<StreamPath>> StreamPath::Open(
    v1::Pagoda::Stub* stub, std::string tenant, std::function<void(grpc::ClientContext*)> prepare,
    std::string host, int port, uint64_t instance_id, absl::Duration io_timeout) {
  if (host.empty() || port <= 0) {
    return absl::FailedPreconditionError("stream path: no data port");
  }
  std::unique_ptr<StreamPath> p(new StreamPath(stub, std::move(tenant), std::move(prepare),
                                               std::move(host), port, instance_id, io_timeout));
  absl::StatusOr<std::unique_ptr<Conn>> c = p->Take();
  if (!c.ok()) return c.status();
  p->Give(std::move(*c));
  return p;
}

absl::StatusOr<std::unique_ptr<StreamPath::Conn>> StreamPath::Take() {
  {
    absl::MutexLock l(&mu_);
    if (!idle_.empty()) {
      std::unique_ptr<Conn> c = std::move(idle_.back());
      idle_.pop_back();
      return c;
    }
  }
  absl::StatusOr<std::unique_ptr<Conn>> c = Dial();
  if (c.ok() || absl::IsUnauthenticated(c.status())) return c;
  Reset();  // the server may have restarted on another data port
  return Dial();
}

absl::StatusOr<std::unique_ptr<StreamPath::Conn>> StreamPath::Dial() {
  int port = 0;
  uint64_t instance_id = 0;
  {
    absl::MutexLock l(&mu_);
    port = port_;
    instance_id = instance_id_;
  }
  if (port <= 0) return absl::UnavailableError("stream path: the server offers no data port");
  absl::StatusOr<int> fd = wire::ConnectTcp(host_, port, io_timeout_);
  if (!fd.ok()) return fd.status();
  auto c = std::make_unique<Conn>();
  c->fd = *fd;
  if (absl::Status s = wire::ConfigureSocket(c->fd, io_timeout_); !s.ok()) return s;
  wire::StreamHello hello;
  if (absl::Status s = wire::ReadAll(c->fd, &hello, sizeof(hello)); !s.ok()) return s;
  if (hello.magic != wire::kHelloMagic || hello.version != wire::kVersion) {
    return absl::UnavailableError(absl::StrCat("stream path: ", host_, ":", port,
                                               " is not a pagodad data port (or another version)"));
  }
  if (instance_id != 0 && hello.instance_id != instance_id) {
    return absl::FailedPreconditionError(
        "stream path: the data port belongs to another pagodad than the gRPC target");
  }
  c->ticket.assign(reinterpret_cast<const char*>(hello.ticket), wire::kTicketBytes);
  return c;
}

void StreamPath::Reset() {
  grpc::ClientContext ctx;
  prepare_(&ctx);
  v1::HealthResponse h;
  const bool ok = stub_->Health(&ctx, v1::HealthRequest(), &h).ok();
  absl::MutexLock l(&mu_);
  idle_.clear();
  if (ok) {
    port_ = static_cast<int>(h.data_port());
    instance_id_ = h.instance_id();
  }
}

namespace {
// A batch the server refused because it does not know the connection's ticket: nothing was done
// (a restarted server, or a connection it closed), so the batch can go again on a fresh one.
bool StaleTicket(const absl::Status& s) {
  return absl::IsNotFound(s) &&
         s.message().find("unknown or closed data connection") != std::string_view::npos;
}
}  // namespace

std::vector<absl::Status> StreamPath::Put(absl::Span<const PutPage> pages) {
  if (pages.empty()) return {};
  std::vector<absl::Status> out = PutOnce(pages);
  if (StaleTicket(out[0])) {
    Reset();
    out = PutOnce(pages);
  }
  return out;
}

void StreamPath::Give(std::unique_ptr<Conn> c) {
  absl::MutexLock l(&mu_);
  if (idle_.size() < kMaxIdle) idle_.push_back(std::move(c));
}

std::vector<absl::Status> StreamPath::PutOnce(absl::Span<const PutPage> pages) {
  const size_t n = pages.size();
  absl::StatusOr<std::unique_ptr<Conn>> conn = Take();
  if (!conn.ok()) return std::vector<absl::Status>(n, conn.status());
  const int fd = (*conn)->fd;

  v1::StreamPutRequest req;
  req.set_ticket((*conn)->ticket);
  req.set_seq(seq_.fetch_add(1));
  v1::PutBegin* begin = req.mutable_begin();
  begin->set_tenant(tenant_);
  wire::StreamFrameHeader frame;
  frame.count = static_cast<uint32_t>(n);
  frame.seq = req.seq();
  for (const PutPage& p : pages) {
    v1::PutPage* pp = begin->add_pages();
    pp->mutable_key()->set_hi(p.key.hi);
    pp->mutable_key()->set_lo(p.key.lo);
    pp->set_layout_id(p.layout);
    pp->set_size(p.bytes.size());
    frame.payload_bytes += p.bytes.size();
  }

  // The call and the bytes go out together: the server reads the frame once it has reserved.
  grpc::ClientContext ctx;
  prepare_(&ctx);
  v1::PutResponse resp;
  grpc::Status call_status;
  absl::Notification done;
  stub_->async()->StreamPut(&ctx, &req, &resp, [&](grpc::Status s) {
    if (!s.ok()) shutdown(fd, SHUT_RDWR);  // a refused batch: stop writing
    call_status = std::move(s);
    done.Notify();
  });
  // Each page is checksummed just before it is sent (one read of its bytes from memory, the
  // send copies them from cache); the checksums follow the pages.
  // Pages go in runs of about kRunBytes: one send per run, its checksums computed just before.
  std::vector<uint64_t> sums(n);
  std::vector<iovec> run = {{&frame, sizeof(frame)}};
  absl::Status sent;
  for (size_t i = 0; i < n && sent.ok();) {
    size_t bytes = 0;
    for (; i < n && (bytes == 0 || bytes + pages[i].bytes.size() <= wire::kRunBytes); ++i) {
      sums[i] = PageChecksum(pages[i].bytes.data(), pages[i].bytes.size());
      run.push_back({const_cast<uint8_t*>(pages[i].bytes.data()), pages[i].bytes.size()});
      bytes += pages[i].bytes.size();
    }
    sent = wire::WriteAllV(fd, run);
    run.clear();
  }
  if (sent.ok()) {
    const iovec trailer{sums.data(), n * sizeof(uint64_t)};
    sent = wire::WriteAllV(fd, {&trailer, 1});
  }
  // A failed send means the server closed the connection (it refused the batch or failed);
  // its answer says why and comes within the call's deadline, so wait for it, never cancel.
  done.WaitForNotification();

  absl::Status s = FromGrpc(call_status);
  if (!sent.ok() && s.ok()) s = sent;
  if (s.ok() && resp.results_size() != static_cast<int>(n)) {
    s = absl::InternalError("Put: the server answered for a different number of pages");
  }
  if (!s.ok()) return std::vector<absl::Status>(n, s);  // the connection is dropped
  Give(std::move(*conn));
  std::vector<absl::Status> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = FromPageStatus(resp.results(static_cast<int>(i)));
  return out;
}

std::vector<GetResult> StreamPath::GetOnce(absl::Span<const GetPage> pages) {
  const size_t n = pages.size();
  std::vector<GetResult> out(n);
  absl::StatusOr<std::unique_ptr<Conn>> conn = Take();
  if (!conn.ok()) {
    for (GetResult& r : out) r.status = conn.status();
    return out;
  }
  const int fd = (*conn)->fd;
  v1::StreamGetRequest req;
  req.set_tenant(tenant_);
  req.set_ticket((*conn)->ticket);
  req.set_seq(seq_.fetch_add(1));
  for (const GetPage& p : pages) {
    v1::PageKey* k = req.add_keys();
    k->set_hi(p.key.hi);
    k->set_lo(p.key.lo);
    req.add_capacity(p.out.size());
  }
  grpc::ClientContext ctx;
  prepare_(&ctx);
  v1::BatchResponse resp;
  grpc::Status call_status;
  absl::Notification done;
  stub_->async()->StreamGet(&ctx, &req, &resp, [&](grpc::Status s) {
    if (!s.ok()) shutdown(fd, SHUT_RDWR);  // no frame will come: end the wait for it
    call_status = std::move(s);
    done.Notify();
  });

  // The frame: header, page headers, then each served page straight into its buffer.
  std::vector<bool> refused(n, false);
  absl::Status read = [&]() -> absl::Status {
    wire::StreamFrameHeader frame;
    if (absl::Status s = wire::ReadAll(fd, &frame, sizeof(frame)); !s.ok()) return s;
    if (frame.magic != wire::kFrameMagic || frame.seq != req.seq() || frame.count != n) {
      return absl::InternalError("Get: the data frame does not match the call");
    }
    // Each page: its header, then (when served) its bytes straight into its buffer, checksummed
    // right away while they are in cache.
    for (size_t i = 0; i < n; ++i) {
      wire::StreamPageHeader h;
      if (absl::Status s = wire::ReadAll(fd, &h, sizeof(h)); !s.ok()) return s;
      if (h.code != 0) {
        refused[i] = true;  // its message comes with the call's answer
        out[i].status = absl::Status(static_cast<absl::StatusCode>(h.code), "");
        continue;
      }
      if (h.size > pages[i].out.size()) {
        return absl::InternalError("Get: the server sent a page larger than its buffer");
      }
      if (absl::Status s = wire::ReadAll(fd, pages[i].out.data(), h.size); !s.ok()) return s;
      if (PageChecksum(pages[i].out.data(), h.size) != h.checksum) {
        out[i].status = absl::DataLossError("Get: checksum mismatch");
      } else {
        out[i].layout = h.layout_id;
        out[i].size = h.size;
      }
    }
    return absl::OkStatus();
  }();
  // A failed read: close our end so a server still writing the frame fails and answers; the
  // server's answer (if it is an error) says more than the broken connection.
  if (!read.ok()) shutdown(fd, SHUT_RDWR);
  done.WaitForNotification();
  absl::Status s = FromGrpc(call_status);
  if (!read.ok() && s.ok()) s = read;
  if (!s.ok()) {
    for (GetResult& r : out) r = GetResult{s, 0, 0};
    return out;  // the connection is dropped
  }
  Give(std::move(*conn));
  // Error pages: the call's answer carries their messages.
  for (size_t i = 0; i < n && static_cast<int>(i) < resp.results_size(); ++i) {
    if (refused[i]) {
      out[i].status = FromPageStatus(resp.results(static_cast<int>(i)));
    }
  }
  return out;
}

std::vector<GetResult> StreamPath::Get(absl::Span<const GetPage> pages) {
  if (pages.empty()) return {};
  std::vector<GetResult> out = GetOnce(pages);
  if (StaleTicket(out[0].status)) {
    Reset();
    out = GetOnce(pages);
  }
  for (size_t i = 0; i < pages.size(); ++i) {
    if (absl::IsDataLoss(out[i].status)) out[i] = GetOnce(pages.subspan(i, 1))[0];
  }
  return out;
}

}  // namespace pagoda::client_internal
