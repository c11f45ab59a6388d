// The Redis baseline's client: hiredis (Debian's libhiredis) over one blocking TCP connection,
// SET and GET of binary values. Move-only; not safe for concurrent use (one per thread).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

struct redisContext;

namespace pagoda::bench {

class RespClient {
 public:
  // Connects to 127.0.0.1:port with TCP_NODELAY. Unavailable when no server answers.
  static absl::StatusOr<RespClient> Connect(int port);

  absl::Status Set(const std::string& key, absl::Span<const uint8_t> value);
  // Reads the value into `out`; returns its length (NotFound for a nil reply, OutOfRange when
  // the value is larger than `out`).
  absl::StatusOr<size_t> Get(const std::string& key, absl::Span<uint8_t> out);
  // Sends a command of plain arguments; returns a status or string reply ("PONG", "OK").
  absl::StatusOr<std::string> Command(std::initializer_list<std::string> args);

 private:
  struct Free {
    void operator()(redisContext* c) const;
  };
  explicit RespClient(redisContext* c) : ctx_(c) {}

  std::unique_ptr<redisContext, Free> ctx_;
};

}  // namespace pagoda::bench
