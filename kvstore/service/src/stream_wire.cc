#include "pagoda/service/stream_wire.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"

namespace pagoda::stream {
namespace {

absl::Status Errno(const std::string& what) {
  return absl::UnavailableError(absl::StrCat("stream path: ", what, ": ", std::strerror(errno)));
}

absl::StatusOr<addrinfo*> Resolve(const std::string& host, int port, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  addrinfo* res = nullptr;
  const std::string h = host.empty() ? "0.0.0.0" : host;
  const int rc = getaddrinfo(h.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0 || res == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("stream path: cannot resolve '", h, "': ", gai_strerror(rc)));
  }
  return res;
}

}  // namespace

absl::StatusOr<int> ListenTcp(const std::string& host, int port, int* bound_port) {
  absl::StatusOr<addrinfo*> ai = Resolve(host, port, true);
  if (!ai.ok()) return ai.status();
  const int fd = socket((*ai)->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    freeaddrinfo(*ai);
    return Errno("socket");
  }
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(fd, (*ai)->ai_addr, (*ai)->ai_addrlen) != 0 || listen(fd, 128) != 0) {
    absl::Status s = Errno(absl::StrCat("listen on ", host, ":", port));
    freeaddrinfo(*ai);
    close(fd);
    return s;
  }
  freeaddrinfo(*ai);
  sockaddr_storage a{};
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  *bound_port = a.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&a)->sin6_port)
                                        : ntohs(reinterpret_cast<sockaddr_in*>(&a)->sin_port);
  return fd;
}

absl::StatusOr<int> ConnectTcp(const std::string& host, int port, absl::Duration timeout) {
  absl::StatusOr<addrinfo*> ai = Resolve(host, port, false);
  if (!ai.ok()) return ai.status();
  const int fd = socket((*ai)->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    freeaddrinfo(*ai);
    return Errno("socket");
  }
  int rc = connect(fd, (*ai)->ai_addr, (*ai)->ai_addrlen);
  freeaddrinfo(*ai);
  if (rc != 0 && errno == EINPROGRESS) {
    pollfd p{fd, POLLOUT, 0};
    rc = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
    int err = 0;
    socklen_t len = sizeof(err);
    if (rc == 1) getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (rc != 1 || err != 0) {
      errno = rc == 0 ? ETIMEDOUT : err;
      absl::Status s = Errno(absl::StrCat("connect to ", host, ":", port));
      close(fd);
      return s;
    }
  } else if (rc != 0) {
    absl::Status s = Errno(absl::StrCat("connect to ", host, ":", port));
    close(fd);
    return s;
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  return fd;
}

absl::Status ConfigureSocket(int fd, absl::Duration io_timeout) {
  const int one = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0) {
    return Errno("TCP_NODELAY");
  }
  timeval tv = absl::ToTimeval(io_timeout);
  if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0 ||
      setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) != 0) {
    return Errno("socket timeouts");
  }
  return absl::OkStatus();
}

absl::Status WriteAllV(int fd, absl::Span<const iovec> iov_in) {
  std::vector<iovec> iov(iov_in.begin(), iov_in.end());
  size_t first = 0;
  while (first < iov.size()) {
    if (iov[first].iov_len == 0) {
      ++first;
      continue;
    }
    msghdr m{};
    m.msg_iov = iov.data() + first;
    m.msg_iovlen = std::min<size_t>(iov.size() - first, IOV_MAX);
    const ssize_t n = sendmsg(fd, &m, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("send");
    }
    size_t left = static_cast<size_t>(n);
    while (left > 0 && first < iov.size()) {
      const size_t take = std::min(left, iov[first].iov_len);
      iov[first].iov_base = static_cast<uint8_t*>(iov[first].iov_base) + take;
      iov[first].iov_len -= take;
      left -= take;
      if (iov[first].iov_len == 0) ++first;
    }
  }
  return absl::OkStatus();
}

absl::Status ReadAll(int fd, void* data, size_t size) {
  uint8_t* p = static_cast<uint8_t*>(data);
  while (size > 0) {
    const ssize_t n = recv(fd, p, size, MSG_WAITALL);
    if (n == 0) return absl::UnavailableError("stream path: peer closed the connection");
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("recv");
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status ReadAllV(int fd, absl::Span<const iovec> iov_in) {
  std::vector<iovec> iov(iov_in.begin(), iov_in.end());
  size_t first = 0;
  while (first < iov.size()) {
    if (iov[first].iov_len == 0) {
      ++first;
      continue;
    }
    msghdr m{};
    m.msg_iov = iov.data() + first;
    m.msg_iovlen = std::min<size_t>(iov.size() - first, IOV_MAX);
    const ssize_t n = recvmsg(fd, &m, MSG_WAITALL);
    if (n == 0) return absl::UnavailableError("stream path: peer closed the connection");
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("recv");
    }
    size_t left = static_cast<size_t>(n);
    while (left > 0 && first < iov.size()) {
      const size_t take = std::min(left, iov[first].iov_len);
      iov[first].iov_base = static_cast<uint8_t*>(iov[first].iov_base) + take;
      iov[first].iov_len -= take;
      left -= take;
      if (iov[first].iov_len == 0) ++first;
    }
  }
  return absl::OkStatus();
}

absl::Status Discard(int fd, uint64_t size) {
  uint8_t buf[64 << 10];
  while (size > 0) {
    const size_t n = std::min<uint64_t>(size, sizeof(buf));
    if (absl::Status s = ReadAll(fd, buf, n); !s.ok()) return s;
    size -= n;
  }
  return absl::OkStatus();
}

}  // namespace pagoda::stream
