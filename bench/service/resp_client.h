// A minimal blocking Redis (RESP2) client for the baseline: SET and GET of binary values over
// one TCP connection. Written for the benchmark; not a general Redis client.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace pagoda::bench {

class RespClient {
 public:
  static absl::StatusOr<RespClient> Connect(int port);
  RespClient(RespClient&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  RespClient& operator=(RespClient&&) = delete;
  ~RespClient();

  absl::Status Set(const std::string& key, absl::Span<const uint8_t> value);
  // Reads the value into `out`; returns its length (NotFound for a nil reply).
  absl::StatusOr<size_t> Get(const std::string& key, absl::Span<uint8_t> out);
  // Sends a command of plain arguments and returns the first reply line (e.g. "+PONG").
  absl::StatusOr<std::string> Command(std::initializer_list<std::string> args);

 private:
  explicit RespClient(int fd) : fd_(fd) {}
  absl::Status SendAll(const void* p, size_t n);
  absl::StatusOr<std::string> ReadLine();
  absl::Status ReadExact(void* p, size_t n);

  int fd_ = -1;
  std::string buf_;  // bytes read but not yet consumed
  size_t pos_ = 0;
};

}  // namespace pagoda::bench
