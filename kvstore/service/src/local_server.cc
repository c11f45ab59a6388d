#include "local_server.h"

#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "pagoda/service/local_protocol.h"
#include "pagoda/service/unix_socket.h"
#include "spdlog/spdlog.h"

namespace pagoda::service {

using local::FrameHeader;
using local::Op;

struct LocalServer::Connection {
  int fd = -1;
  std::string tenant;
  bool hello = false;
  struct Slot {
    uint64_t offset = 0;
    uint64_t size = 0;
    PageKey key;
  };
  absl::flat_hash_map<uint64_t, Slot> reservations;  // engine reservation id -> slot
  absl::flat_hash_set<uint64_t> leases;
  std::string in;   // payload buffer
  std::string out;  // reply buffer
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

// Sends an error frame; the caller then closes the connection.
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
  (void)local::WriteAll(fd, out.data(), out.size());
}

}  // namespace

LocalServer::LocalServer(Store* store, const Authorizer* auth, ServiceMetrics* metrics,
                         LocalServerOptions options)
    : store_(store), auth_(auth), metrics_(metrics), options_(options) {}

LocalServer::~LocalServer() { Stop(); }

absl::Status LocalServer::Start(const std::string& path) {
  absl::StatusOr<int> fd = local::ListenUnix(path, 128);
  if (!fd.ok()) return fd.status();
  listen_fd_ = *fd;
  path_ = path;
  acceptor_ = std::thread([this] { AcceptLoop(); });
  return absl::OkStatus();
}

void LocalServer::Stop() {
  if (stopping_.exchange(true)) return;
  if (listen_fd_ >= 0) ::shutdown(listen_fd_, SHUT_RDWR);
  if (acceptor_.joinable()) acceptor_.join();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  listen_fd_ = -1;
  {
    // Wake every connection blocked in recv; a request being served still gets its reply.
    absl::MutexLock l(&mu_);
    for (auto& [id, c] : conns_) ::shutdown(c->fd, SHUT_RD);
  }
  // Join every connection thread (joining, not waiting on a flag, so no thread still touches
  // this object when Stop returns).
  absl::flat_hash_map<uint64_t, std::thread> threads;
  {
    absl::MutexLock l(&mu_);
    threads.swap(threads_);
    finished_.clear();
  }
  for (auto& [id, t] : threads) t.join();
  if (!path_.empty()) ::unlink(path_.c_str());
}

void LocalServer::AcceptLoop() {
  while (!stopping_) {
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (stopping_) break;
      if (errno == EINTR || errno == ECONNABORTED) continue;
      spdlog::warn("local path: accept failed: {}", strerror(errno));
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    auto conn = std::make_shared<Connection>();
    conn->fd = fd;
    std::vector<std::thread> done;  // threads of connections that ended, joined outside the lock
    {
      absl::MutexLock l(&mu_);
      for (uint64_t f : finished_) {
        auto it = threads_.find(f);
        if (it != threads_.end()) {
          done.push_back(std::move(it->second));
          threads_.erase(it);
        }
      }
      finished_.clear();
      uint64_t id = next_id_++;
      conns_[id] = conn;
      active_++;
      threads_[id] = std::thread([this, conn, id] {
        Serve(conn);
        absl::MutexLock l(&mu_);
        conns_.erase(id);
        ::close(conn->fd);  // after the erase: Stop() never touches a closed (reused) fd
        active_--;
        finished_.push_back(id);
      });
    }
    for (std::thread& t : done) t.join();
  }
}

void LocalServer::Serve(std::shared_ptr<Connection> conn) {
  const int fd = conn->fd;
  const HostArena arena = store_->HostArenaInfo();
  absl::Status end;
  while (true) {
    FrameHeader h;
    absl::Status s = local::ReadAll(fd, &h, sizeof(h));
    if (!s.ok()) {
      if (!absl::IsCancelled(s)) end = s;
      break;
    }
    const auto start = std::chrono::steady_clock::now();
    const Op op = static_cast<Op>(h.op);
    // --- frame validation: anything off closes the connection (no way to resync a stream).
    if (h.magic != local::kMagic) {
      end = absl::InvalidArgumentError("local protocol: bad magic (not a pagoda client?)");
    } else if (op == Op::kHello) {
      if (conn->hello) end = absl::FailedPreconditionError("local protocol: second Hello");
      if (h.payload_bytes < sizeof(local::HelloRequest) || h.payload_bytes > local::kMaxHelloBytes)
        end = absl::InvalidArgumentError("local protocol: Hello payload size out of range");
    } else if (EntryBytes(op) == 0) {
      end = absl::InvalidArgumentError(absl::StrCat("local protocol: unknown op ", h.op));
    } else if (!conn->hello) {
      end = absl::FailedPreconditionError("local protocol: Hello must come first");
    } else if (h.count == 0 || h.count > local::kMaxEntries) {
      end = absl::InvalidArgumentError(
          absl::StrCat("local protocol: entry count must be 1..", local::kMaxEntries));
    } else if (uint64_t{h.payload_bytes} != uint64_t{h.count} * EntryBytes(op)) {
      end = absl::InvalidArgumentError("local protocol: payload size does not match entry count");
    }
    if (!end.ok()) {
      SendError(fd, end);
      break;
    }
    conn->in.resize(h.payload_bytes);
    s = local::ReadAll(fd, conn->in.data(), h.payload_bytes);
    if (!s.ok()) {
      end = s;
      break;
    }
    std::string& out = conn->out;
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
    const char* p = conn->in.data();

    if (op == Op::kHello) {
      local::HelloRequest req;
      memcpy(&req, p, sizeof(req));
      local::HelloReply reply;
      absl::Status st;
      if (uint64_t{req.tenant_bytes} + req.token_bytes + sizeof(req) != h.payload_bytes) {
        st = absl::InvalidArgumentError("local protocol: Hello lengths do not add up");
      } else {
        std::string tenant(p + sizeof(req), req.tenant_bytes);
        std::string token(p + sizeof(req) + req.tenant_bytes, req.token_bytes);
        st = auth_->Check(tenant, token);
        if (st.ok() && active_.load() > options_.max_connections) {
          st = absl::ResourceExhaustedError("local path: too many connections");
        }
        if (st.ok()) {
          conn->tenant = tenant;
          conn->hello = true;
        }
      }
      reply.code = static_cast<int32_t>(st.code());
      reply.arena_bytes = st.ok() ? arena.size : 0;
      reply.instance_id = options_.instance_id;
      rh.payload_bytes = sizeof(reply) + 4 + static_cast<uint32_t>(st.message().size());
      Append(&out, rh);
      Append(&out, reply);
      Append(&out, static_cast<uint32_t>(st.message().size()));
      out += std::string(st.message());
      s = st.ok() ? local::WriteWithFd(fd, out.data(), out.size(), arena.fd)
                  : local::WriteAll(fd, out.data(), out.size());
      metrics_->ObserveRequest(OpName(op), "local", st, 0);
      if (!st.ok() || !s.ok()) break;
      continue;
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
                                : absl::AbortedError(absl::StrCat("batch rejected: page ",
                                                                  bad_index, " is invalid"));
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
    if (!s.ok()) {
      end = s;
      break;
    }
  }
  if (!end.ok() && !stopping_)
    spdlog::info("local client ({}) closed: {}", conn->tenant, end.ToString());
  // Whatever the client left open must not stay half-written or leased.
  for (const auto& [id, slot] : conn->reservations) (void)store_->Abort(id);
  for (uint64_t lease : conn->leases) (void)store_->ReleaseRead(lease);
  conn->reservations.clear();
  conn->leases.clear();
}

}  // namespace pagoda::service
