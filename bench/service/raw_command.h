// The one request of the raw socket baseline (raw_socket_peer.cc).
#pragma once

#include <cstdint>

namespace pagoda::bench {

struct RawCommand {
  enum : uint32_t { kPut = 1, kGet = 2 };
  uint32_t op = kPut;
  uint32_t reserved = 0;
  uint64_t bytes = 0;
};

}  // namespace pagoda::bench
