#include "http_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace pagoda::service {

HttpServer::HttpServer(Handler handler) : handler_(std::move(handler)) {}

HttpServer::~HttpServer() { Stop(); }

absl::StatusOr<int> HttpServer::Start(const std::string& host, int port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("http: not an IPv4 address: '", host, "'"));
  }
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("http socket: ", strerror(errno)));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || ::listen(fd, 64) != 0) {
    absl::Status s =
        absl::UnavailableError(absl::StrCat("http bind ", host, ":", port, ": ", strerror(errno)));
    ::close(fd);
    return s;
  }
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  listen_fd_ = fd;
  thread_ = std::thread([this] { Loop(); });
  return static_cast<int>(ntohs(addr.sin_port));
}

void HttpServer::Stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  listen_fd_ = -1;
}

void HttpServer::Loop() {
  while (!stop_) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    Serve(c);
    ::close(c);
  }
}

void HttpServer::Serve(int fd) {
  timeval tv{2, 0};  // a silent client cannot hold the thread for long
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  std::string req;
  char buf[2048];
  while (req.find("\r\n\r\n") == std::string::npos && req.size() < 16384) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    req.append(buf, static_cast<size_t>(n));
  }
  HttpReply reply;
  std::vector<std::string> first = absl::StrSplit(req.substr(0, req.find("\r\n")), ' ');
  if (first.size() < 2 || first[1].empty() || first[1][0] != '/') {
    reply = {400, "text/plain", "bad request\n"};
  } else if (first[0] != "GET") {
    reply = {405, "text/plain", "only GET\n"};
  } else {
    std::string path = first[1].substr(0, first[1].find('?'));
    reply = handler_(path);
  }
  const char* reason = reply.status == 200   ? "OK"
                       : reply.status == 404 ? "Not Found"
                       : reply.status == 503 ? "Service Unavailable"
                                             : "Error";
  std::string head =
      absl::StrCat("HTTP/1.0 ", reply.status, " ", reason, "\r\nContent-Type: ", reply.content_type,
                   "\r\nContent-Length: ", reply.body.size(), "\r\nConnection: close\r\n\r\n");
  head += reply.body;
  const char* p = head.data();
  size_t left = head.size();
  while (left > 0) {
    ssize_t n = ::send(fd, p, left, MSG_NOSIGNAL);
    if (n <= 0) break;
    p += n;
    left -= static_cast<size_t>(n);
  }
}

}  // namespace pagoda::service
