// The wire format of pagodad's local zero-copy path (a unix stream socket).
//
// A local client connects to the socket, sends Hello (tenant + bearer token) and receives the
// memfd of its tenant's host pages (SCM_RIGHTS) and its size: offsets in it are host arena offsets,
// and it holds no other tenant's bytes. The memfd is sealed against shrink and grow. It maps the
// arena and from then on moves page bytes itself: Reserve -> memcpy into the slot -> Commit for
// writes; Acquire -> memcpy out of the slot -> verify the checksum -> Release for reads. Only these
// small fixed-size records cross the socket. The tenant is bound to the connection at Hello.
//
// Every request is a FrameHeader followed by `count` fixed-size entries of the op's request type.
// Every request except Release is answered by a FrameHeader with the same op and count, `count`
// reply entries, then a u32 length and the text of the first failing entry (empty if all are OK).
// A malformed frame (bad magic, unknown op, too many entries, wrong payload size) is answered with
// an Op::kError frame carrying a code and a message, and the server closes the connection.
// Reservations and leases of a connection that closes are aborted / released by the server.
//
// All integers are little-endian host order (the socket never leaves the machine).
#pragma once

#include <cstddef>
#include <cstdint>

namespace pagoda::local {

inline constexpr uint32_t kMagic = 0x31444750;  // "PGD1"
inline constexpr uint32_t kMaxEntries = 4096;   // per frame
inline constexpr uint32_t kMaxHelloBytes = 4096;

enum class Op : uint16_t {
  kHello = 1,
  kReserve = 2,
  kCommit = 3,
  kAbort = 4,
  kAcquire = 5,
  kRelease = 6,  // no reply
  kError = 0xFFFF,
};

struct FrameHeader {
  uint32_t magic = kMagic;
  uint16_t op = 0;
  uint16_t reserved = 0;
  uint32_t count = 0;          // number of entries (Hello: 1)
  uint32_t payload_bytes = 0;  // bytes after the header
};
static_assert(sizeof(FrameHeader) == 16);

// Hello request payload: HelloRequest, then tenant bytes, then token bytes.
struct HelloRequest {
  uint32_t tenant_bytes = 0;
  uint32_t token_bytes = 0;
};
// Hello reply payload (the memfd rides along as SCM_RIGHTS ancillary data when code == 0).
struct HelloReply {
  int32_t code = 0;  // absl::StatusCode
  // The tenant's pages lie in whole segments of this many bytes (a client may prefault a segment
  // of its mapping once it got a slot in it; the rest of the memfd holds nothing of this tenant).
  uint32_t segment_bytes = 0;
  uint64_t arena_bytes = 0;
  // Random id of this pagodad run, also in the gRPC Health answer: a client checks that the
  // socket it found belongs to the server it talks gRPC to (not another pagodad on this machine).
  uint64_t instance_id = 0;
};

struct ReserveRequest {
  uint64_t key_hi = 0;
  uint64_t key_lo = 0;
  uint32_t layout_id = 0;
  uint32_t reserved = 0;
  uint64_t size = 0;
};
struct ReserveReply {
  int32_t code = 0;
  uint32_t reserved = 0;
  uint64_t handle = 0;
  uint64_t offset = 0;  // byte offset of the slot in the arena
};

struct CommitRequest {
  uint64_t handle = 0;
  uint64_t checksum = 0;  // XXH3-64 of the bytes written into the slot
};
struct AbortRequest {
  uint64_t handle = 0;
};
struct CodeReply {
  int32_t code = 0;
  uint32_t reserved = 0;
};

struct AcquireRequest {
  uint64_t key_hi = 0;
  uint64_t key_lo = 0;
};
struct AcquireReply {
  int32_t code = 0;
  uint32_t layout_id = 0;
  uint64_t lease = 0;
  uint64_t offset = 0;
  uint64_t size = 0;
  uint64_t checksum = 0;
};

struct ReleaseRequest {
  uint64_t lease = 0;
};

struct ErrorReply {
  int32_t code = 0;
  uint32_t message_bytes = 0;  // followed by the message
};

}  // namespace pagoda::local
