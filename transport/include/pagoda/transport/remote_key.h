// The bytes that let a peer reach registered memory: carried by the control plane (gRPC), never
// interpreted there. Framed with a magic, a version and a checksum so that a damaged or foreign
// key is rejected before it reaches the transport library.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "pagoda/transport/transfer.h"

namespace pagoda {

// Everything a peer needs to address one registration remotely.
struct RemoteKey {
  MemoryKind kind = MemoryKind::kHost;
  uint64_t base = 0;          // address of the registration in the owner's address space
  uint64_t length = 0;        // bytes registered; remote offsets must stay below it
  std::string transport_key;  // the transport's own packed key (a UCX rkey buffer)
};

// Serializes `key`. Deterministic: equal keys give equal bytes.
std::string EncodeRemoteKey(const RemoteKey& key);
// Parses bytes made by EncodeRemoteKey. InvalidArgument on any damage (short, wrong magic or
// version, bad checksum, trailing bytes, zero length, base + length overflowing).
absl::StatusOr<RemoteKey> DecodeRemoteKey(std::string_view bytes);

// Frames a transport's worker address (what Transport::address() returns) the same way.
std::string EncodePeerAddress(std::string_view transport_address);
absl::StatusOr<std::string> DecodePeerAddress(std::string_view bytes);

}  // namespace pagoda
