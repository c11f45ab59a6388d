#include "local_server.h"

#include <fcntl.h>
#include <grp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "pagoda/service/local_protocol.h"
#include "pagoda/service/unix_socket.h"
#include "spdlog/spdlog.h"

namespace pagoda::service {

using local::FrameHeader;
using local::Op;

struct LocalServer::Connection {
  int fd = -1;
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  std::string tenant;
  bool hello = false;
  struct Slot {
    uint64_t offset = 0;
    uint64_t size = 0;
    PageKey key;
  };
  absl::flat_hash_map<uint64_t, Slot> reservations;  // engine reservation id -> slot
  absl::flat_hash_set<uint64_t> leases;
  std::string in;    // the frame being assembled: header, then payload
  size_t have = 0;   // bytes of `in` received
  std::string out;   // reply buffer
  absl::Status end;  // why the connection closes (set by Handle)
  absl::Time accepted;
  absl::Time last_active;
  absl::Time frame_started = absl::InfiniteFuture();
  // Under LocalServer::mu_: a worker owns the connection (it is queued or being served); closed.
  bool busy = false;
  bool closed = false;
};

namespace {

template <typename T>
void Append(std::string* out, const T& v) {
  out->append(reinterpret_cast<const char*>(&v), sizeof(T));
}

size_t EntryBytes(Op op) {
  switch (op) {
    case Op::kReserve:
      return sizeof(local::ReserveRequest);
    case Op::kCommit:
      return sizeof(local::CommitRequest);
    case Op::kAbort:
      return sizeof(local::AbortRequest);
    case Op::kAcquire:
      return sizeof(local::AcquireRequest);
    case Op::kRelease:
      return sizeof(local::ReleaseRequest);
    default:
      return 0;
  }
}

const char* OpName(Op op) {
  switch (op) {
    case Op::kHello:
      return "LocalHello";
    case Op::kReserve:
      return "LocalReserve";
    case Op::kCommit:
      return "LocalCommit";
    case Op::kAbort:
      return "LocalAbort";
    case Op::kAcquire:
      return "LocalAcquire";
    case Op::kRelease:
      return "LocalRelease";
    default:
      return "LocalUnknown";
  }
}

// Sends an error frame without blocking (best effort: the connection closes next).
void SendError(int fd, const absl::Status& s) {
  std::string out;
  FrameHeader h;
  h.op = static_cast<uint16_t>(Op::kError);
  h.count = 1;
  std::string msg(s.message());
  h.payload_bytes = static_cast<uint32_t>(sizeof(local::ErrorReply) + msg.size());
  Append(&out, h);
  local::ErrorReply e{static_cast<int32_t>(s.code()), static_cast<uint32_t>(msg.size())};
  Append(&out, e);
  out += msg;
  (void)::send(fd, out.data(), out.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
}

// Checks a frame header against the connection's state; the payload is not read yet.
absl::Status CheckHeader(const FrameHeader& h, bool hello_done) {
  const Op op = static_cast<Op>(h.op);
  if (h.magic != local::kMagic) {
    return absl::InvalidArgumentError("local protocol: bad magic (not a pagoda client?)");
  }
  if (op == Op::kHello) {
    if (hello_done) return absl::FailedPreconditionError("local protocol: second Hello");
    if (h.payload_bytes < sizeof(local::HelloRequest) || h.payload_bytes > local::kMaxHelloBytes) {
      return absl::InvalidArgumentError("local protocol: Hello payload size out of range");
    }
    return absl::OkStatus();
  }
  if (EntryBytes(op) == 0) {
    return absl::InvalidArgumentError(absl::StrCat("local protocol: unknown op ", h.op));
  }
  if (!hello_done) return absl::FailedPreconditionError("local protocol: Hello must come first");
  if (h.count == 0 || h.count > local::kMaxEntries) {
    return absl::InvalidArgumentError(
        absl::StrCat("local protocol: entry count must be 1..", local::kMaxEntries));
  }
  if (uint64_t{h.payload_bytes} != uint64_t{h.count} * EntryBytes(op)) {
    return absl::InvalidArgumentError("local protocol: payload size does not match entry count");
  }
  return absl::OkStatus();
}

bool Listed(const std::vector<uint32_t>& list, uint32_t v) {
  return std::find(list.begin(), list.end(), v) != list.end();
}

// Whether the peer (uid, primary gid, supplementary gids) passes the allow-list.
bool PeerAllowed(const LocalServerOptions& o, int fd, const ucred& cred, std::string* groups) {
  std::vector<gid_t> gids(64);
  socklen_t len = static_cast<socklen_t>(gids.size() * sizeof(gid_t));
  if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, gids.data(), &len) == 0) {
    gids.resize(len / sizeof(gid_t));
  } else {
    gids.clear();
  }
  *groups = absl::StrJoin(gids, ",");
  if (o.allowed_uids.empty() && o.allowed_gids.empty()) return true;
  if (Listed(o.allowed_uids, cred.uid) || Listed(o.allowed_gids, cred.gid)) return true;
  for (gid_t g : gids) {
    if (Listed(o.allowed_gids, g)) return true;
  }
  return false;
}

}  // namespace

LocalServer::LocalServer(Store* store, const Authorizer* auth, ServiceMetrics* metrics,
                         LocalServerOptions options)
    : store_(store), auth_(auth), metrics_(metrics), options_(options) {}

LocalServer::~LocalServer() { Stop(); }

absl::Status LocalServer::Start(const std::string& path) {
  gid_t socket_gid = static_cast<gid_t>(-1);
  if (!options_.socket_group.empty()) {
    std::vector<char> buf(16384);
    struct group g {};
    struct group* found = nullptr;
    if (getgrnam_r(options_.socket_group.c_str(), &g, buf.data(), buf.size(), &found) != 0 ||
        found == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("local socket group '", options_.socket_group, "' does not exist"));
    }
    socket_gid = found->gr_gid;
  }
  absl::StatusOr<int> fd = local::ListenUnix(path, 128);
  if (!fd.ok()) return fd.status();
  listen_fd_ = *fd;
  path_ = path;
  if (socket_gid != static_cast<gid_t>(-1) &&
      ::chown(path.c_str(), static_cast<uid_t>(-1), socket_gid) != 0) {
    return absl::PermissionDeniedError(absl::StrCat("cannot give the local socket to group '",
                                                    options_.socket_group, "': ", strerror(errno)));
  }
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (epoll_fd_ < 0 || wake_fd_ < 0) {
    return absl::InternalError(absl::StrCat("local path: epoll/eventfd: ", strerror(errno)));
  }
  const int flags = fcntl(listen_fd_, F_GETFL);
  fcntl(listen_fd_, F_SETFL, flags | O_NONBLOCK);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = listen_fd_;
  epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &ev);
  ev.data.fd = wake_fd_;
  epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev);
  loop_ = std::thread([this] { EventLoop(); });
  for (int i = 0; i < std::max(1, options_.threads); ++i) {
    workers_.emplace_back([this] { Worker(); });
  }
  return absl::OkStatus();
}

void LocalServer::Stop() {
  if (stopping_.exchange(true)) return;
  if (wake_fd_ >= 0) {
    const uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof(one));
  }
  if (loop_.joinable()) loop_.join();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  listen_fd_ = -1;
  {
    absl::MutexLock l(&mu_);
    workers_stop_ = true;  // workers serve what is queued, then leave
  }
  for (std::thread& t : workers_) t.join();
  workers_.clear();
  std::vector<std::shared_ptr<Connection>> left;
  {
    absl::MutexLock l(&mu_);
    for (auto& [fd, c] : conns_) left.push_back(c);
  }
  for (auto& c : left) Close(c, absl::OkStatus());
  if (epoll_fd_ >= 0) ::close(epoll_fd_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
  epoll_fd_ = wake_fd_ = -1;
  if (!path_.empty()) ::unlink(path_.c_str());
}

void LocalServer::EventLoop() {
  epoll_event events[64];
  absl::Time next_sweep = absl::Now();
  while (!stopping_) {
    const int n = epoll_wait(epoll_fd_, events, 64, 100);
    if (n < 0 && errno != EINTR) {
      spdlog::error("local path: epoll_wait: {}", strerror(errno));
      break;
    }
    for (int i = 0; i < n && !stopping_; ++i) {
      const int fd = events[i].data.fd;
      if (fd == wake_fd_) break;
      if (fd == listen_fd_) {
        Accept();
        continue;
      }
      std::shared_ptr<Connection> c;
      {
        absl::MutexLock l(&mu_);
        auto it = conns_.find(fd);
        if (it == conns_.end() || it->second->busy || it->second->closed) continue;
        c = it->second;
      }
      absl::Status error;
      if (!ReadFrame(*c, &error)) {
        if (error.ok()) {
          Rearm(c);
        } else {
          if (!absl::IsCancelled(error)) SendError(c->fd, error);
          Close(c, error);
        }
        continue;
      }
      absl::MutexLock l(&mu_);
      c->busy = true;
      ready_.push_back(std::move(c));
    }
    if (absl::Now() >= next_sweep) {
      SweepDeadlines();
      next_sweep = absl::Now() + absl::Milliseconds(100);
    }
  }
}

void LocalServer::Accept() {
  for (;;) {
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        spdlog::warn("local path: accept failed: {}", strerror(errno));
      }
      return;
    }
    ucred cred{};
    socklen_t len = sizeof(cred);
    getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len);
    std::string groups;
    absl::Status refused;
    if (active_.load() >= options_.max_connections) {
      refused = absl::ResourceExhaustedError(
          absl::StrCat("local path: too many connections (server.local_max_connections = ",
                       options_.max_connections, ")"));
    } else if (!PeerAllowed(options_, fd, cred, &groups)) {
      refused = absl::PermissionDeniedError(absl::StrCat(
          "local path: uid ", cred.uid, " gid ", cred.gid, " is not allowed on this socket"));
    }
    if (!refused.ok()) {
      // At most one line a second: a flood of connections must not flood the log too.
      const absl::Time now = absl::Now();
      if (now - last_refusal_log_ >= absl::Seconds(1)) {
        spdlog::warn("local client pid {} uid {} gid {} refused: {} ({} more refused before)",
                     cred.pid, cred.uid, cred.gid, std::string(refused.message()),
                     refusals_unlogged_);
        last_refusal_log_ = now;
        refusals_unlogged_ = 0;
      } else {
        refusals_unlogged_++;
      }
      SendError(fd, refused);
      ::close(fd);
      continue;
    }
    // Replies are written by workers with blocking sends; a peer that does not read them fails
    // the send after io_timeout instead of holding the worker.
    const timeval tv = absl::ToTimeval(options_.io_timeout);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    auto c = std::make_shared<Connection>();
    c->fd = fd;
    c->pid = cred.pid;
    c->uid = cred.uid;
    c->gid = cred.gid;
    c->accepted = c->last_active = absl::Now();
    spdlog::debug("local client pid {} uid {} gid {} groups [{}] connected", cred.pid, cred.uid,
                  cred.gid, groups);
    {
      absl::MutexLock l(&mu_);
      conns_[fd] = c;
      active_++;
    }
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP | EPOLLONESHOT;
    ev.data.fd = fd;
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
  }
}

bool LocalServer::ReadFrame(Connection& c, absl::Status* error) {
  for (;;) {
    const size_t want = c.have < sizeof(FrameHeader)
                            ? sizeof(FrameHeader)
                            : sizeof(FrameHeader) +
                                  reinterpret_cast<const FrameHeader*>(c.in.data())->payload_bytes;
    if (c.in.size() < want) c.in.resize(want);
    if (c.have < want) {
      const ssize_t n = ::recv(c.fd, c.in.data() + c.have, want - c.have, MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return false;
        *error = absl::UnavailableError(absl::StrCat("recv: ", strerror(errno)));
        return false;
      }
      if (n == 0) {
        *error = c.have == 0 ? absl::CancelledError("peer closed")
                             : absl::DataLossError("peer closed in the middle of a frame");
        return false;
      }
      if (c.have == 0) c.frame_started = absl::Now();
      c.have += static_cast<size_t>(n);
      if (c.have == sizeof(FrameHeader)) {
        FrameHeader h;
        memcpy(&h, c.in.data(), sizeof(h));
        if (absl::Status s = CheckHeader(h, c.hello); !s.ok()) {
          *error = s;
          return false;
        }
      }
      continue;
    }
    return true;  // header checked (when it arrived) and payload complete
  }
}

void LocalServer::Rearm(const std::shared_ptr<Connection>& c) {
  // Re-armed under mu_, as Close marks the connection closed under mu_ before it closes the fd:
  // re-armed outside it, the event loop (the sweep, or an event of this very fd) could close the
  // fd in between and a new connection reuse its number, which this MOD would then arm while the
  // loop serves it (two threads on one connection). TSan found the unordered epoll_ctl / close.
  absl::MutexLock l(&mu_);
  if (c->closed) return;
  c->busy = false;
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP | EPOLLONESHOT;
  ev.data.fd = c->fd;
  epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c->fd, &ev);
}

void LocalServer::Close(const std::shared_ptr<Connection>& c, const absl::Status& why) {
  {
    absl::MutexLock l(&mu_);
    if (c->closed) return;
    c->closed = true;
    conns_.erase(c->fd);
  }
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c->fd, nullptr);
  if (!why.ok() && !stopping_) {
    spdlog::info("local client pid {} uid {} ({}) closed: {}", c->pid, c->uid,
                 c->tenant.empty() ? "no Hello" : c->tenant, why.ToString());
  }
  // Whatever the client left open must not stay half-written or leased.
  for (const auto& [id, slot] : c->reservations) (void)store_->Abort(id);
  for (uint64_t lease : c->leases) (void)store_->ReleaseRead(lease);
  c->reservations.clear();
  c->leases.clear();
  ::close(c->fd);  // after the erase: no thread finds a closed (reused) fd
  active_--;
}

void LocalServer::SweepDeadlines() {
  const absl::Time now = absl::Now();
  std::vector<std::pair<std::shared_ptr<Connection>, absl::Status>> expired;
  {
    absl::MutexLock l(&mu_);
    for (auto& [fd, c] : conns_) {
      if (c->busy || c->closed) continue;
      if (!c->hello && now - c->accepted > options_.handshake_timeout) {
        expired.push_back({c, absl::DeadlineExceededError(
                                  absl::StrCat("local path: no Hello within ",
                                               absl::FormatDuration(options_.handshake_timeout)))});
      } else if (c->have > 0 && now - c->frame_started > options_.io_timeout) {
        expired.push_back({c, absl::DeadlineExceededError(
                                  absl::StrCat("local path: frame not completed within ",
                                               absl::FormatDuration(options_.io_timeout)))});
      } else if (!c->reservations.empty() && now - c->last_active > options_.reservation_timeout) {
        expired.push_back(
            {c, absl::DeadlineExceededError(absl::StrCat(
                    "local path: reservations held idle for over ",
                    absl::FormatDuration(options_.reservation_timeout), "; aborted"))});
      }
    }
  }
  for (auto& [c, why] : expired) {
    SendError(c->fd, why);
    Close(c, why);
  }
}

void LocalServer::Worker() {
  for (;;) {
    std::shared_ptr<Connection> c;
    {
      absl::MutexLock l(&mu_);
      mu_.Await(absl::Condition(
          +[](LocalServer* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu_) {
            return !s->ready_.empty() || s->workers_stop_;
          },
          this));
      if (ready_.empty()) return;
      c = std::move(ready_.front());
      ready_.pop_front();
    }
    if (Handle(*c)) {
      c->in.clear();
      c->have = 0;
      c->frame_started = absl::InfiniteFuture();
      c->last_active = absl::Now();
      Rearm(c);
    } else {
      Close(c, c->end);
    }
  }
}

bool LocalServer::Handle(Connection& c) {
  Connection* const conn = &c;
  const int fd = c.fd;
  const HostArena arena = store_->HostArenaInfo();
  FrameHeader h;
  memcpy(&h, c.in.data(), sizeof(h));
  const char* p = c.in.data() + sizeof(FrameHeader);
  const Op op = static_cast<Op>(h.op);
  const auto start = std::chrono::steady_clock::now();
  absl::Status s;
  std::string& out = c.out;
  out.clear();
  FrameHeader rh;
  rh.op = h.op;
  rh.count = h.count;
  std::string first_error;
  absl::Status request_status;
  auto note = [&](size_t i, const absl::Status& st) {
    if (!st.ok() && first_error.empty()) {
      first_error = absl::StrCat("page ", i, ": ", std::string(st.message()));
      request_status = st;
    }
  };

  if (op == Op::kHello) {
    local::HelloRequest req;
    memcpy(&req, p, sizeof(req));
    local::HelloReply reply;
    absl::Status st;
    int tenant_fd = -1;
    if (uint64_t{req.tenant_bytes} + req.token_bytes + sizeof(req) != h.payload_bytes) {
      st = absl::InvalidArgumentError("local protocol: Hello lengths do not add up");
    } else {
      std::string tenant(p + sizeof(req), req.tenant_bytes);
      std::string token(p + sizeof(req) + req.tenant_bytes, req.token_bytes);
      st = auth_->Check(tenant, token);
      if (st.ok()) {
        // Only this tenant's memfd: the client maps none of another tenant's bytes.
        absl::StatusOr<int> tfd = store_->TenantArenaFd(tenant);
        st = tfd.status();
        if (tfd.ok()) tenant_fd = *tfd;
      }
      if (st.ok()) {
        c.tenant = tenant;
        c.hello = true;
        spdlog::info("local client pid {} uid {} gid {} is tenant '{}'", c.pid, c.uid, c.gid,
                     tenant);
      } else {
        spdlog::warn("local client pid {} uid {} gid {} refused at Hello: {}", c.pid, c.uid, c.gid,
                     st.ToString());
      }
    }
    reply.code = static_cast<int32_t>(st.code());
    reply.arena_bytes = st.ok() ? arena.size : 0;
    reply.segment_bytes = st.ok() ? static_cast<uint32_t>(arena.segment_bytes) : 0;
    reply.instance_id = options_.instance_id;
    rh.payload_bytes = sizeof(reply) + 4 + static_cast<uint32_t>(st.message().size());
    Append(&out, rh);
    Append(&out, reply);
    Append(&out, static_cast<uint32_t>(st.message().size()));
    out += std::string(st.message());
    s = st.ok() ? local::WriteWithFd(fd, out.data(), out.size(), tenant_fd)
                : local::WriteAll(fd, out.data(), out.size());
    metrics_->ObserveRequest(OpName(op), "local", st, 0);
    c.end = st.ok() ? s : st;
    return st.ok() && s.ok();
  }

  const size_t open = conn->reservations.size() + conn->leases.size();
  switch (op) {
    case Op::kReserve: {
      // Validate the whole batch first: a malformed batch reserves nothing.
      std::vector<local::ReserveRequest> reqs(h.count);
      memcpy(reqs.data(), p, h.payload_bytes);
      std::vector<PageLayout> layouts(h.count);
      absl::Status bad;
      size_t bad_index = 0;
      absl::flat_hash_set<PageKey> seen;
      for (size_t i = 0; i < reqs.size() && bad.ok(); ++i) {
        absl::StatusOr<PageLayout> l = PageLayout::FromId(reqs[i].layout_id);
        bad_index = i;
        if (!l.ok()) {
          bad = absl::InvalidArgumentError(
              absl::StrCat("unknown layout id ", reqs[i].layout_id, ": ", l.status().message()));
        } else if (l->PageBytes() != reqs[i].size) {
          bad = absl::InvalidArgumentError(absl::StrCat("page size ", reqs[i].size,
                                                        " does not match layout ", l->ToString(),
                                                        " (", l->PageBytes(), " bytes)"));
        } else if (!seen.insert(PageKey{reqs[i].key_hi, reqs[i].key_lo}).second) {
          bad = absl::InvalidArgumentError("duplicate key in one batch");
        } else {
          layouts[i] = *l;
        }
      }
      if (bad.ok() && open + reqs.size() > options_.max_open_per_connection) {
        bad = absl::ResourceExhaustedError("too many open reservations and leases");
      }
      rh.payload_bytes = static_cast<uint32_t>(h.count * sizeof(local::ReserveReply));
      Append(&out, rh);
      for (size_t i = 0; i < reqs.size(); ++i) {
        local::ReserveReply r;
        absl::Status st;
        if (!bad.ok()) {
          st = i == bad_index ? bad
                              : absl::AbortedError(absl::StrCat("batch rejected: page ", bad_index,
                                                                " is invalid"));
        } else {
          absl::StatusOr<Reservation> res =
              store_->Reserve(conn->tenant, PageKey{reqs[i].key_hi, reqs[i].key_lo}, layouts[i]);
          if (res.ok()) {
            conn->reservations[res->id] = {res->arena_offset, res->size, res->key};
            r.handle = res->id;
            r.offset = res->arena_offset;
          }
          st = res.status();
        }
        r.code = static_cast<int32_t>(st.code());
        note(i, st);
        Append(&out, r);
      }
      if (!bad.ok())
        first_error = absl::StrCat("page ", bad_index, ": ", std::string(bad.message()));
      break;
    }
    case Op::kCommit: {
      rh.payload_bytes = static_cast<uint32_t>(h.count * sizeof(local::CodeReply));
      Append(&out, rh);
      uint64_t bytes = 0;
      for (size_t i = 0; i < h.count; ++i) {
        local::CommitRequest req;
        memcpy(&req, p + i * sizeof(req), sizeof(req));
        absl::Status st;
        auto it = conn->reservations.find(req.handle);
        if (it == conn->reservations.end()) {
          st = absl::NotFoundError(
              absl::StrCat("no open reservation ", req.handle, " on this connection"));
        } else {
          const Connection::Slot slot = it->second;
          conn->reservations.erase(it);
          // The client hashed what it meant to write; the slot must hold exactly that.
          if (PageChecksum(arena.base + slot.offset, slot.size) != req.checksum) {
            (void)store_->Abort(req.handle);
            st = absl::DataLossError(
                "checksum of the slot does not match the client's; page aborted");
          } else {
            st = store_->Commit(req.handle);
            if (st.ok()) bytes += slot.size;
          }
        }
        note(i, st);
        Append(&out, local::CodeReply{static_cast<int32_t>(st.code()), 0});
      }
      metrics_->AddBytesIn("local", bytes);
      break;
    }
    case Op::kAbort: {
      rh.payload_bytes = static_cast<uint32_t>(h.count * sizeof(local::CodeReply));
      Append(&out, rh);
      for (size_t i = 0; i < h.count; ++i) {
        local::AbortRequest req;
        memcpy(&req, p + i * sizeof(req), sizeof(req));
        absl::Status st;
        if (conn->reservations.erase(req.handle) == 0) {
          st = absl::NotFoundError(
              absl::StrCat("no open reservation ", req.handle, " on this connection"));
        } else {
          st = store_->Abort(req.handle);
        }
        note(i, st);
        Append(&out, local::CodeReply{static_cast<int32_t>(st.code()), 0});
      }
      break;
    }
    case Op::kAcquire: {
      rh.payload_bytes = static_cast<uint32_t>(h.count * sizeof(local::AcquireReply));
      Append(&out, rh);
      uint64_t bytes = 0;
      for (size_t i = 0; i < h.count; ++i) {
        local::AcquireRequest req;
        memcpy(&req, p + i * sizeof(req), sizeof(req));
        local::AcquireReply r;
        absl::Status st;
        if (open + i >= options_.max_open_per_connection) {
          st = absl::ResourceExhaustedError("too many open reservations and leases");
        } else {
          absl::StatusOr<ReadLease> lease =
              store_->AcquireRead(conn->tenant, PageKey{req.key_hi, req.key_lo});
          st = lease.status();
          if (lease.ok()) {
            conn->leases.insert(lease->lease_id);
            r.layout_id = lease->layout.Id();
            r.lease = lease->lease_id;
            r.offset = lease->arena_offset;
            r.size = lease->size;
            r.checksum = lease->checksum;
            bytes += lease->size;
          }
        }
        r.code = static_cast<int32_t>(st.code());
        if (!absl::IsNotFound(st)) note(i, st);
        Append(&out, r);
      }
      metrics_->AddBytesOut("local", bytes);
      break;
    }
    case Op::kRelease: {
      for (size_t i = 0; i < h.count; ++i) {
        local::ReleaseRequest req;
        memcpy(&req, p + i * sizeof(req), sizeof(req));
        if (conn->leases.erase(req.lease)) (void)store_->ReleaseRead(req.lease);
      }
      break;
    }
    default:
      break;
  }
  if (op != Op::kRelease) {
    Append(&out, static_cast<uint32_t>(first_error.size()));
    out += first_error;
    reinterpret_cast<FrameHeader*>(out.data())->payload_bytes =
        static_cast<uint32_t>(out.size() - sizeof(FrameHeader));
    s = local::WriteAll(fd, out.data(), out.size());
  }
  metrics_->ObserveRequest(
      OpName(op), "local", request_status,
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  c.end = s;
  return s.ok();
}

}  // namespace pagoda::service
