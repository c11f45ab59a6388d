#include "data_stream.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "absl/random/random.h"
#include "pagoda/service/stream_wire.h"
#include "spdlog/spdlog.h"

namespace pagoda::service {

struct DataStreamServer::Connection {
  int fd = -1;
  std::string ticket;
  std::string tenant;  // "" until the first claim
  bool busy = false;
  ~Connection() {
    if (fd >= 0) close(fd);
  }
};

DataStreamServer::~DataStreamServer() { Stop(); }

absl::Status DataStreamServer::Start(const std::string& host, int port) {
  absl::StatusOr<int> fd = stream::ListenTcp(host, port, &port_);
  if (!fd.ok()) return fd.status();
  listen_fd_ = *fd;
  acceptor_ = std::thread([this] { AcceptLoop(); });
  return absl::OkStatus();
}

void DataStreamServer::Stop() {
  if (stopping_.exchange(true)) return;
  if (listen_fd_ >= 0) shutdown(listen_fd_, SHUT_RDWR);
  if (acceptor_.joinable()) acceptor_.join();
  if (listen_fd_ >= 0) close(listen_fd_);
  listen_fd_ = -1;
  absl::MutexLock l(&mu_);
  for (auto& [t, c] : conns_) shutdown(c->fd, SHUT_RDWR);  // busy batches fail their I/O
  conns_.clear();
}

int DataStreamServer::connections() const {
  absl::MutexLock l(&mu_);
  return static_cast<int>(conns_.size());
}

void DataStreamServer::SweepDead() {
  std::vector<std::string> dead;
  for (auto& [t, c] : conns_) {
    if (c->busy) continue;
    // Only a hang-up counts: an idle connection may already carry the bytes of a Put whose call
    // has not reached its handler yet.
    pollfd p{c->fd, POLLRDHUP, 0};
    if (poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0) {
      dead.push_back(t);
    }
  }
  for (const std::string& t : dead) conns_.erase(t);
}

void DataStreamServer::AcceptLoop() {
  absl::BitGen rng;
  while (!stopping_.load()) {
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (stopping_.load()) return;
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        continue;
      }
      return;
    }
    auto c = std::make_shared<Connection>();
    c->fd = fd;
    stream::StreamHello hello;
    for (size_t i = 0; i < stream::kTicketBytes; i += 8) {
      const uint64_t r = absl::Uniform<uint64_t>(rng);
      std::memcpy(hello.ticket + i, &r, 8);
    }
    hello.instance_id = options_.instance_id;
    c->ticket.assign(reinterpret_cast<const char*>(hello.ticket), stream::kTicketBytes);
    if (!stream::ConfigureSocket(fd, options_.io_timeout).ok()) continue;  // c closes it
    {
      // Registered before the hello goes out: a client may name the ticket in a call as soon as
      // it has read it.
      absl::MutexLock l(&mu_);
      if (static_cast<int>(conns_.size()) >= options_.max_connections) SweepDead();
      if (static_cast<int>(conns_.size()) >= options_.max_connections) {
        spdlog::warn("stream path: {} connections open; refusing another", conns_.size());
        continue;  // c closes the socket
      }
      conns_[c->ticket] = c;
    }
    const iovec iov{&hello, sizeof(hello)};
    if (!stream::WriteAllV(fd, {&iov, 1}).ok()) Close(c->ticket);
  }
}

absl::StatusOr<std::unique_ptr<DataStreamServer::Claim>> DataStreamServer::Acquire(
    const std::string& ticket, const std::string& tenant) {
  absl::MutexLock l(&mu_);
  auto it = conns_.find(ticket);
  if (it == conns_.end()) {
    return absl::NotFoundError("stream path: unknown or closed data connection");
  }
  Connection& c = *it->second;
  if (!c.tenant.empty() && c.tenant != tenant) {
    return absl::PermissionDeniedError(
        "stream path: the data connection belongs to another tenant");
  }
  if (c.busy) return absl::FailedPreconditionError("stream path: the data connection is busy");
  c.tenant = tenant;
  c.busy = true;
  return std::make_unique<Claim>(this, it->second);
}

void DataStreamServer::Close(const std::string& ticket) {
  absl::MutexLock l(&mu_);
  auto it = conns_.find(ticket);
  if (it == conns_.end()) return;
  shutdown(it->second->fd, SHUT_RDWR);
  conns_.erase(it);
}

int DataStreamServer::Claim::fd() const { return conn_->fd; }

DataStreamServer::Claim::~Claim() {
  if (failed_) {
    server_->Close(conn_->ticket);
    return;
  }
  absl::MutexLock l(&server_->mu_);
  conn_->busy = false;
}

}  // namespace pagoda::service
