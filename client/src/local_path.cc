#include "local_path.h"

#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "pagoda/service/local_protocol.h"
#include "pagoda/service/unix_socket.h"

namespace pagoda::client_internal {

using local::FrameHeader;
using local::Op;

struct LocalPath::Conn {
  int fd = -1;
  std::string scratch;
  ~Conn() {
    if (fd >= 0) ::close(fd);
  }
};

namespace {

absl::Status CodeStatus(int32_t code, const std::string& text) {
  auto c = static_cast<absl::StatusCode>(code);
  if (c == absl::StatusCode::kOk) return absl::OkStatus();
  return absl::Status(c, text);
}

}  // namespace

LocalPath::LocalPath(std::string socket, std::string tenant, std::string token, int max_connections,
                     bool prefault, uint64_t expect_instance, absl::Duration timeout)
    : socket_(std::move(socket)),
      tenant_(std::move(tenant)),
      token_(std::move(token)),
      max_connections_(max_connections < 1 ? 1 : max_connections),
      prefault_(prefault),
      expect_instance_(expect_instance),
      timeout_(timeout) {}

LocalPath::~LocalPath() {
  {
    absl::MutexLock l(&mu_);
    idle_.clear();
  }
  if (arena_ != nullptr) ::munmap(arena_, arena_bytes_);
}

absl::StatusOr<std::unique_ptr<LocalPath>> LocalPath::Open(
    const std::string& socket, const std::string& tenant, const std::string& token,
    int max_connections, bool prefault, uint64_t expect_instance, absl::Duration timeout) {
  std::unique_ptr<LocalPath> p(
      new LocalPath(socket, tenant, token, max_connections, prefault, expect_instance, timeout));
  absl::StatusOr<std::unique_ptr<Conn>> first = p->Dial();
  if (!first.ok()) return first.status();
  absl::MutexLock l(&p->mu_);
  p->open_ = 1;
  p->idle_.push_back(std::move(*first));
  return p;
}

absl::StatusOr<std::unique_ptr<LocalPath::Conn>> LocalPath::Dial() {
  absl::StatusOr<int> fd = local::ConnectUnix(socket_);
  if (!fd.ok()) return fd.status();
  auto conn = std::make_unique<Conn>();
  conn->fd = *fd;
  if (timeout_ != absl::InfiniteDuration() && timeout_ > absl::ZeroDuration()) {
    const timeval tv = absl::ToTimeval(timeout_);
    setsockopt(conn->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(conn->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  }
  std::string msg;
  FrameHeader h;
  h.op = static_cast<uint16_t>(Op::kHello);
  h.count = 1;
  h.payload_bytes =
      static_cast<uint32_t>(sizeof(local::HelloRequest) + tenant_.size() + token_.size());
  local::HelloRequest hello{static_cast<uint32_t>(tenant_.size()),
                            static_cast<uint32_t>(token_.size())};
  msg.append(reinterpret_cast<const char*>(&h), sizeof(h));
  msg.append(reinterpret_cast<const char*>(&hello), sizeof(hello));
  msg += tenant_;
  msg += token_;
  if (absl::Status s = local::WriteAll(conn->fd, msg.data(), msg.size()); !s.ok()) return s;
  FrameHeader rh;
  absl::StatusOr<int> arena_fd = local::ReadWithFd(conn->fd, &rh, sizeof(rh));
  if (!arena_fd.ok()) return arena_fd.status();
  auto close_fd = [&] {
    if (*arena_fd >= 0) ::close(*arena_fd);
  };
  std::string body(rh.payload_bytes, '\0');
  if (rh.magic != local::kMagic || rh.payload_bytes > local::kMaxHelloBytes) {
    close_fd();
    return absl::InternalError("local path: malformed Hello reply");
  }
  if (absl::Status s = local::ReadAll(conn->fd, body.data(), body.size()); !s.ok()) {
    close_fd();
    return s;
  }
  if (rh.op == static_cast<uint16_t>(Op::kError) || body.size() < sizeof(local::HelloReply) + 4) {
    close_fd();
    local::ErrorReply e{};
    if (body.size() >= sizeof(e)) memcpy(&e, body.data(), sizeof(e));
    return absl::Status(static_cast<absl::StatusCode>(e.code ? e.code : 13),
                        "local path: " + body.substr(sizeof(e)));
  }
  local::HelloReply reply;
  memcpy(&reply, body.data(), sizeof(reply));
  if (reply.code != 0) {
    close_fd();
    return absl::Status(static_cast<absl::StatusCode>(reply.code),
                        "local path: " + body.substr(sizeof(reply) + 4));
  }
  if (*arena_fd < 0) return absl::InternalError("local path: server sent no arena descriptor");
  if (expect_instance_ != 0 && reply.instance_id != expect_instance_) {
    close_fd();
    return absl::FailedPreconditionError(
        "local path: the socket belongs to another pagodad than the gRPC target");
  }
  if (arena_ == nullptr) {
    // No MAP_POPULATE: most of the memfd is other tenants' segments, which must stay untouched
    // (touching them would only allocate memory in this tenant's file). See Prefault.
    void* m = ::mmap(nullptr, reply.arena_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, *arena_fd, 0);
    close_fd();
    if (m == MAP_FAILED) {
      return absl::InternalError(absl::StrCat("local path: mmap of the arena failed: ", errno));
    }
    arena_ = static_cast<uint8_t*>(m);
    arena_bytes_ = reply.arena_bytes;
    segment_bytes_ = reply.segment_bytes;
    if (segment_bytes_ > 0) {
      const size_t n = static_cast<size_t>((arena_bytes_ + segment_bytes_ - 1) / segment_bytes_);
      prefaulted_ = std::make_unique<std::atomic<bool>[]>(n);
    }
  } else {
    close_fd();
  }
  return conn;
}

void LocalPath::Prefault(uint64_t offset) {
  if (!prefault_ || segment_bytes_ == 0 || offset >= arena_bytes_) return;
  const uint64_t seg = offset / segment_bytes_;
  if (prefaulted_[seg].exchange(true)) return;
  const uint64_t start = seg * segment_bytes_;
  // Best effort (kernels before 5.14 lack it): a fault then happens on first copy instead.
  (void)::madvise(arena_ + start, std::min(segment_bytes_, arena_bytes_ - start),
                  MADV_POPULATE_WRITE);
}

absl::StatusOr<std::unique_ptr<LocalPath::Conn>> LocalPath::Borrow() {
  {
    absl::MutexLock l(&mu_);
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !idle_.empty() || open_ < max_connections_;
    };
    mu_.Await(absl::Condition(&ready));
    if (!idle_.empty()) {
      std::unique_ptr<Conn> c = std::move(idle_.back());
      idle_.pop_back();
      return c;
    }
    ++open_;
  }
  absl::StatusOr<std::unique_ptr<Conn>> c = Dial();
  if (!c.ok()) {
    absl::MutexLock l(&mu_);
    --open_;
  }
  return c;
}

void LocalPath::Return(std::unique_ptr<Conn> conn, bool healthy) {
  absl::MutexLock l(&mu_);
  if (healthy) {
    idle_.push_back(std::move(conn));
  } else {
    --open_;  // a broken stream cannot be resynchronized; the next Borrow dials afresh
  }
}

absl::Status LocalPath::Exchange(Conn* c, uint16_t op, uint32_t count, const void* req,
                                 size_t req_bytes, void* reply, size_t reply_bytes,
                                 std::string* first_error) {
  std::string& buf = c->scratch;
  buf.clear();
  FrameHeader h;
  h.op = op;
  h.count = count;
  h.payload_bytes = static_cast<uint32_t>(req_bytes);
  buf.append(reinterpret_cast<const char*>(&h), sizeof(h));
  buf.append(static_cast<const char*>(req), req_bytes);
  if (absl::Status s = local::WriteAll(c->fd, buf.data(), buf.size()); !s.ok()) return s;
  if (op == static_cast<uint16_t>(Op::kRelease)) return absl::OkStatus();  // no reply
  FrameHeader rh;
  if (absl::Status s = local::ReadAll(c->fd, &rh, sizeof(rh)); !s.ok()) return s;
  if (rh.magic != local::kMagic || rh.payload_bytes > (64u << 20)) {
    return absl::InternalError("local path: malformed reply frame");
  }
  if (rh.op == static_cast<uint16_t>(Op::kError)) {
    std::string body(rh.payload_bytes, '\0');
    (void)local::ReadAll(c->fd, body.data(), body.size());
    local::ErrorReply e{};
    if (body.size() >= sizeof(e)) memcpy(&e, body.data(), sizeof(e));
    return absl::Status(static_cast<absl::StatusCode>(e.code ? e.code : 13),
                        "local path: " + body.substr(std::min(body.size(), sizeof(e))));
  }
  if (rh.op != op || rh.count != count || rh.payload_bytes < reply_bytes + 4) {
    return absl::InternalError("local path: reply does not match the request");
  }
  if (absl::Status s = local::ReadAll(c->fd, reply, reply_bytes); !s.ok()) return s;
  uint32_t len = 0;
  if (absl::Status s = local::ReadAll(c->fd, &len, 4); !s.ok()) return s;
  if (len != rh.payload_bytes - reply_bytes - 4) {
    return absl::InternalError("local path: reply length mismatch");
  }
  first_error->assign(len, '\0');
  return local::ReadAll(c->fd, first_error->data(), len);
}

std::vector<absl::Status> LocalPath::Put(absl::Span<const PutPage> pages) {
  std::vector<absl::Status> out(pages.size());
  if (pages.empty()) return out;
  if (pages.size() > local::kMaxEntries) {
    // Split: each part is its own batch.
    size_t done = 0;
    while (done < pages.size()) {
      size_t n = std::min<size_t>(local::kMaxEntries, pages.size() - done);
      std::vector<absl::Status> part = Put(pages.subspan(done, n));
      std::move(part.begin(), part.end(), out.begin() + done);
      done += n;
    }
    return out;
  }
  absl::StatusOr<std::unique_ptr<Conn>> conn = Borrow();
  if (!conn.ok()) return std::vector<absl::Status>(pages.size(), conn.status());
  const uint32_t n = static_cast<uint32_t>(pages.size());
  std::vector<local::ReserveRequest> req(n);
  for (uint32_t i = 0; i < n; ++i) {
    req[i] = {pages[i].key.hi, pages[i].key.lo, pages[i].layout, 0, pages[i].bytes.size()};
  }
  std::vector<local::ReserveReply> rep(n);
  std::string err;
  absl::Status s = Exchange(conn->get(), static_cast<uint16_t>(Op::kReserve), n, req.data(),
                            n * sizeof(req[0]), rep.data(), n * sizeof(rep[0]), &err);
  if (!s.ok()) {
    Return(std::move(*conn), false);
    return std::vector<absl::Status>(n, s);
  }
  // Copy into the slots (no server hop) and hash the source: the server checks the slot holds
  // exactly these bytes before it commits.
  std::vector<local::CommitRequest> commits;
  std::vector<uint32_t> committed;
  for (uint32_t i = 0; i < n; ++i) {
    out[i] = CodeStatus(rep[i].code, err.empty() ? "local reserve failed" : err);
    if (!out[i].ok()) continue;
    if (rep[i].offset + pages[i].bytes.size() > arena_bytes_) {
      out[i] = absl::InternalError("local path: slot outside the arena");
      local::AbortRequest a{rep[i].handle};
      local::CodeReply r;
      std::string e2;
      (void)Exchange(conn->get(), static_cast<uint16_t>(Op::kAbort), 1, &a, sizeof(a), &r,
                     sizeof(r), &e2);
      continue;
    }
    Prefault(rep[i].offset);
    memcpy(arena_ + rep[i].offset, pages[i].bytes.data(), pages[i].bytes.size());
    commits.push_back({rep[i].handle, PageChecksum(pages[i].bytes.data(), pages[i].bytes.size())});
    committed.push_back(i);
  }
  if (!commits.empty()) {
    const uint32_t m = static_cast<uint32_t>(commits.size());
    std::vector<local::CodeReply> codes(m);
    s = Exchange(conn->get(), static_cast<uint16_t>(Op::kCommit), m, commits.data(),
                 m * sizeof(commits[0]), codes.data(), m * sizeof(codes[0]), &err);
    for (uint32_t j = 0; j < m; ++j) {
      out[committed[j]] =
          s.ok() ? CodeStatus(codes[j].code, err.empty() ? "local commit failed" : err) : s;
    }
  }
  Return(std::move(*conn), s.ok());
  return out;
}

std::vector<GetResult> LocalPath::GetOnce(absl::Span<const GetPage> pages) {
  const uint32_t n = static_cast<uint32_t>(pages.size());
  std::vector<GetResult> out(n);
  absl::StatusOr<std::unique_ptr<Conn>> conn = Borrow();
  if (!conn.ok()) {
    for (GetResult& r : out) r.status = conn.status();
    return out;
  }
  std::vector<local::AcquireRequest> req(n);
  for (uint32_t i = 0; i < n; ++i) req[i] = {pages[i].key.hi, pages[i].key.lo};
  std::vector<local::AcquireReply> rep(n);
  std::string err;
  absl::Status s = Exchange(conn->get(), static_cast<uint16_t>(Op::kAcquire), n, req.data(),
                            n * sizeof(req[0]), rep.data(), n * sizeof(rep[0]), &err);
  if (!s.ok()) {
    Return(std::move(*conn), false);
    for (GetResult& r : out) r.status = s;
    return out;
  }
  std::vector<local::ReleaseRequest> release;
  for (uint32_t i = 0; i < n; ++i) {
    const local::AcquireReply& r = rep[i];
    if (r.code != 0) {
      out[i].status = r.code == static_cast<int32_t>(absl::StatusCode::kNotFound)
                          ? absl::NotFoundError("page not stored")
                          : CodeStatus(r.code, err.empty() ? "local acquire failed" : err);
      continue;
    }
    release.push_back({r.lease});
    if (r.offset + r.size > arena_bytes_) {
      out[i].status = absl::InternalError("local path: lease outside the arena");
    } else if (pages[i].out.size() < r.size) {
      out[i].status = absl::InvalidArgumentError(absl::StrCat(
          "output buffer of ", pages[i].out.size(), " bytes for a ", r.size, "-byte page"));
    } else {
      Prefault(r.offset);
      memcpy(pages[i].out.data(), arena_ + r.offset, r.size);
      // The lease may have run out mid-copy: only the checksum says the copy is the page.
      if (PageChecksum(pages[i].out.data(), r.size) != r.checksum) {
        out[i].status = absl::DataLossError("checksum mismatch after copying from the arena");
      } else {
        out[i].layout = r.layout_id;
        out[i].size = r.size;
      }
    }
  }
  if (!release.empty()) {
    std::string unused;
    s = Exchange(conn->get(), static_cast<uint16_t>(Op::kRelease),
                 static_cast<uint32_t>(release.size()), release.data(),
                 release.size() * sizeof(release[0]), nullptr, 0, &unused);
  }
  Return(std::move(*conn), s.ok());
  return out;
}

std::vector<GetResult> LocalPath::Get(absl::Span<const GetPage> pages) {
  std::vector<GetResult> out(pages.size());
  for (size_t done = 0; done < pages.size();) {
    size_t n = std::min<size_t>(local::kMaxEntries, pages.size() - done);
    std::vector<GetResult> part = GetOnce(pages.subspan(done, n));
    // One retry of pages whose copy raced with their slot's reuse.
    for (size_t i = 0; i < n; ++i) {
      if (absl::IsDataLoss(part[i].status)) {
        std::vector<GetResult> again = GetOnce(pages.subspan(done + i, 1));
        part[i] = std::move(again[0]);
      }
    }
    std::move(part.begin(), part.end(), out.begin() + done);
    done += n;
  }
  return out;
}

}  // namespace pagoda::client_internal
