// The stream data path's wire format and TCP helpers (issue 15), shared by pagodad and the client
// library. gRPC carries each batch's control (StreamGet / StreamPut, see pagoda.proto); page bytes
// travel on a plain TCP connection to pagodad's data port, in one frame per batch:
//
//   connect      server -> client  StreamHello (magic, version, ticket, instance id)
//   StreamGet    server -> client  StreamFrameHeader, then per key in order: its StreamPageHeader
//                                  followed, when its code is 0, by its bytes
//   StreamPut    client -> server  StreamFrameHeader, the bytes of every page in order, then
//                                  count x uint64 PageChecksum of each page (computed as each
//                                  page is sent, while its bytes are in cache)
//
// All integers are little-endian (the structs are written as they lie in memory: x86-64 and
// aarch64 are both little-endian; the static_asserts pin the layout).
//
// Thread safety: the functions are stateless; one socket must not be read (or written) by two
// threads at once.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace pagoda::stream {

inline constexpr uint32_t kHelloMagic = 0x53444750;  // "PGDS"
inline constexpr uint32_t kFrameMagic = 0x46444750;  // "PGDF"
inline constexpr uint32_t kVersion = 1;
inline constexpr size_t kTicketBytes = 16;
// Pages are sent and received in runs of about this many bytes: one system call per run, and a
// run's bytes are checksummed while they are still in cache.
inline constexpr size_t kRunBytes = 1 << 20;

struct StreamHello {
  uint32_t magic = kHelloMagic;
  uint32_t version = kVersion;
  uint8_t ticket[kTicketBytes] = {};
  uint64_t instance_id = 0;
};
static_assert(sizeof(StreamHello) == 32);

struct StreamFrameHeader {
  uint32_t magic = kFrameMagic;
  uint32_t count = 0;          // pages in the batch
  uint64_t seq = 0;            // the call's seq
  uint64_t payload_bytes = 0;  // StreamPut: page bytes before the trailer; StreamGet: 0
};
static_assert(sizeof(StreamFrameHeader) == 24);

struct StreamPageHeader {
  int32_t code = 0;  // absl::StatusCode of the page; 0 = its bytes follow
  uint32_t layout_id = 0;
  uint64_t size = 0;
  uint64_t checksum = 0;  // PageChecksum of the bytes
};
static_assert(sizeof(StreamPageHeader) == 24);

// Listens on host:port (port 0 = any free port); returns the socket and sets *bound_port.
absl::StatusOr<int> ListenTcp(const std::string& host, int port, int* bound_port);
// Connects to host:port with TCP_NODELAY, waiting at most `timeout`.
absl::StatusOr<int> ConnectTcp(const std::string& host, int port, absl::Duration timeout);
// TCP_NODELAY and send/receive timeouts (a stalled peer fails a call instead of hanging it).
absl::Status ConfigureSocket(int fd, absl::Duration io_timeout);

// Writes all bytes of `iov` (any number of entries; MSG_NOSIGNAL). Unavailable on failure.
absl::Status WriteAllV(int fd, absl::Span<const iovec> iov);
// Reads exactly `size` bytes. Unavailable on a closed peer, an error or a timeout.
absl::Status ReadAll(int fd, void* data, size_t size);
// Reads exactly the bytes of `iov` (any number of entries), in order, with as few calls as the
// kernel allows. Unavailable as ReadAll.
absl::Status ReadAllV(int fd, absl::Span<const iovec> iov);
// Reads and drops `size` bytes.
absl::Status Discard(int fd, uint64_t size);

}  // namespace pagoda::stream
