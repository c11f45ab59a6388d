#include "resp_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace pagoda::bench {

absl::StatusOr<RespClient> RespClient::Connect(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ::close(fd);
    return absl::UnavailableError(absl::StrCat("redis connect :", port, " failed"));
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return RespClient(fd);
}

RespClient::~RespClient() {
  if (fd_ >= 0) ::close(fd_);
}

absl::Status RespClient::SendAll(const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t w = ::send(fd_, c, n, MSG_NOSIGNAL);
    if (w <= 0) return absl::UnavailableError("redis send failed");
    c += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

absl::Status RespClient::ReadExact(void* p, size_t n) {
  char* out = static_cast<char*>(p);
  const size_t have = std::min(n, buf_.size() - pos_);
  memcpy(out, buf_.data() + pos_, have);
  pos_ += have;
  size_t got = have;
  while (got < n) {  // large values: straight into the destination
    ssize_t r = ::recv(fd_, out + got, n - got, 0);
    if (r <= 0) return absl::UnavailableError("redis recv failed");
    got += static_cast<size_t>(r);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> RespClient::ReadLine() {
  while (true) {
    size_t e = buf_.find("\r\n", pos_);
    if (e != std::string::npos) {
      std::string line = buf_.substr(pos_, e - pos_);
      pos_ = e + 2;
      if (pos_ == buf_.size()) {
        buf_.clear();
        pos_ = 0;
      }
      return line;
    }
    char tmp[4096];
    ssize_t r = ::recv(fd_, tmp, sizeof(tmp), 0);
    if (r <= 0) return absl::UnavailableError("redis recv failed");
    buf_.append(tmp, static_cast<size_t>(r));
  }
}

absl::Status RespClient::Set(const std::string& key, absl::Span<const uint8_t> value) {
  std::string head =
      absl::StrCat("*3\r\n$3\r\nSET\r\n$", key.size(), "\r\n", key, "\r\n$", value.size(), "\r\n");
  iovec iov[3] = {{head.data(), head.size()},
                  {const_cast<uint8_t*>(value.data()), value.size()},
                  {const_cast<char*>("\r\n"), 2}};
  size_t total = head.size() + value.size() + 2;
  int idx = 0;
  while (total > 0) {
    ssize_t w = ::writev(fd_, iov + idx, 3 - idx);
    if (w <= 0) return absl::UnavailableError("redis writev failed");
    total -= static_cast<size_t>(w);
    size_t left = static_cast<size_t>(w);
    while (idx < 3 && left >= iov[idx].iov_len) {
      left -= iov[idx].iov_len;
      ++idx;
    }
    if (idx < 3) {
      iov[idx].iov_base = static_cast<char*>(iov[idx].iov_base) + left;
      iov[idx].iov_len -= left;
    }
  }
  absl::StatusOr<std::string> line = ReadLine();
  if (!line.ok()) return line.status();
  if (*line != "+OK") return absl::InternalError("redis SET: " + *line);
  return absl::OkStatus();
}

absl::StatusOr<size_t> RespClient::Get(const std::string& key, absl::Span<uint8_t> out) {
  std::string cmd = absl::StrCat("*2\r\n$3\r\nGET\r\n$", key.size(), "\r\n", key, "\r\n");
  if (absl::Status s = SendAll(cmd.data(), cmd.size()); !s.ok()) return s;
  absl::StatusOr<std::string> line = ReadLine();
  if (!line.ok()) return line.status();
  if (line->empty() || (*line)[0] != '$') return absl::InternalError("redis GET: " + *line);
  int64_t n = 0;
  if (!absl::SimpleAtoi(line->substr(1), &n)) return absl::InternalError("redis GET length");
  if (n < 0) return absl::NotFoundError("nil");
  if (static_cast<size_t>(n) > out.size()) return absl::InternalError("redis value too large");
  if (absl::Status s = ReadExact(out.data(), static_cast<size_t>(n)); !s.ok()) return s;
  char crlf[2];
  if (absl::Status s = ReadExact(crlf, 2); !s.ok()) return s;
  return static_cast<size_t>(n);
}

absl::StatusOr<std::string> RespClient::Command(std::initializer_list<std::string> args) {
  std::string cmd = absl::StrCat("*", args.size(), "\r\n");
  for (const std::string& a : args) absl::StrAppend(&cmd, "$", a.size(), "\r\n", a, "\r\n");
  if (absl::Status s = SendAll(cmd.data(), cmd.size()); !s.ok()) return s;
  return ReadLine();
}

}  // namespace pagoda::bench
