// Pagoda's data plane: one-sided batched reads and writes of registered memory with asynchronous
// completion and an explicit result per transfer. Control (who holds what, remote keys, addresses)
// travels elsewhere (gRPC); this interface moves bytes only.
//
// Typical use, owner side:   auto mem = transport->Register(buf, len, MemoryKind::kHost);
//                            send(transport->address(), mem->PackRemoteKey()) over the control
//                            plane
// Initiator side:            auto ep = transport->Connect(peer_address);
//                            auto remote = ep->ImportRemoteKey(key_bytes);
//                            auto fut = ep->Post(TransferDirection::kRead, *remote, ops);
//                            fut->Wait();
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "pagoda/transport/transfer.h"

namespace pagoda {

// A local registration; deregistered when destroyed. The memory must stay valid (and, while any
// peer may hold its key, registered) until then. Safe for concurrent use.
class RegisteredMemory {
 public:
  virtual ~RegisteredMemory() = default;
  virtual void* base() const = 0;
  virtual size_t length() const = 0;
  virtual MemoryKind kind() const = 0;
  // The bytes a peer passes to TransportEndpoint::ImportRemoteKey (see remote_key.h).
  virtual absl::StatusOr<std::string> PackRemoteKey() const = 0;
};

// A peer's registration imported through its key; usable only with the endpoint that imported it.
// Immutable after creation; safe for concurrent use.
class RemoteMemory {
 public:
  virtual ~RemoteMemory() = default;
  virtual uint64_t base() const = 0;
  virtual uint64_t length() const = 0;
  virtual MemoryKind kind() const = 0;
};

// A connection to one peer transport. Safe for concurrent use without external synchronization.
// Destroying it fails (Cancelled) batches still in flight; wait for futures first.
class TransportEndpoint {
 public:
  virtual ~TransportEndpoint() = default;

  // Unpacks a peer's key (from RegisteredMemory::PackRemoteKey). InvalidArgument when the bytes are
  // damaged or not a key of this transport; nothing changes then.
  virtual absl::StatusOr<std::unique_ptr<RemoteMemory>> ImportRemoteKey(std::string_view key) = 0;

  // Posts `ops` as one batch. The whole batch is validated first: an empty batch, a null local
  // pointer, a zero length, or a range outside `remote` gives InvalidArgument / OutOfRange and
  // posts nothing. Unavailable when the endpoint has failed (peer died, timed out). Otherwise
  // returns at once; the future completes with one status per op. A batch not complete within the
  // transport's `op_timeout` fails with DeadlineExceeded and the endpoint is closed (no hangs).
  // `remote` must outlive the returned future's completion.
  // Caveat (UCX over tcp, where the target answers reads in software): after a batch failed with
  // DeadlineExceeded, a late answer from a peer that was slow, not dead, may still be written into
  // that batch's local buffers until the Transport is destroyed. Keep such buffers (or read into
  // staging) until then; a peer that died cannot do this.
  virtual absl::StatusOr<TransferFuture> Post(TransferDirection direction,
                                              const RemoteMemory& remote,
                                              absl::Span<const TransferOp> ops,
                                              TransferCallback callback = nullptr) = 0;

  // OK while usable; the failure (Unavailable / DeadlineExceeded) once the peer is lost.
  virtual absl::Status health() const = 0;
};

struct TransportOptions {
  enum class Kind { kAuto, kUcx };
  // kAuto picks the best implementation this machine has (today: UCX, whose transports are chosen
  // below). There is no silent fallback to a slower kind than asked for.
  Kind kind = Kind::kAuto;
  // UCX_TLS for this transport. Empty: the UCX_TLS environment variable when set; else "all" when
  // an RDMA device exists, else "tcp,sm,self" (sm = sysv/posix shared memory + cma).
  std::string ucx_tls;
  // UCX_NET_DEVICES for this transport: the network devices it listens and connects on (e.g. "lo"
  // for this machine only, "eth0", "all"). Empty: the UCX_NET_DEVICES environment variable, else
  // every device.
  std::string net_devices;
  // A batch still incomplete after this long fails with DeadlineExceeded and closes its endpoint.
  absl::Duration op_timeout = absl::Seconds(30);
  // Connect endpoints in UCX's peer-failure mode: a peer that dies fails its transfers with
  // Unavailable instead of hanging or aborting. UCX 1.13 offers this only on transports that can
  // notice a dead peer (tcp; rc/ud/dc on RDMA NICs), so shared memory and cma are not used. Turn it
  // off only between trusted processes of one node (e.g. a local sidecar and its workers) to get
  // shared-memory speed; a peer crash may then go unnoticed until op_timeout.
  bool detect_peer_failure = true;
  // How long the progress thread busy-polls after the last activity before sleeping on the event
  // fd. Longer: lower latency for sparse batches, more CPU burnt.
  absl::Duration spin_before_sleep = absl::Microseconds(50);
};

// What this machine offers the transports (probed at run time).
struct TransportCapabilities {
  int rdma_devices = 0;          // ibverbs devices found (0 on machines without RDMA NICs)
  bool ucx_cuda_memory = false;  // UCX can register CUDA memory (Debian's UCX cannot)
  std::string ucx_version;
};
TransportCapabilities ProbeTransportCapabilities();

// A transport instance: one progress thread, its registrations and endpoints. Safe for concurrent
// use. Everything it created (registrations, endpoints, remote memory) may be destroyed in any
// order relative to it.
class Transport {
 public:
  static absl::StatusOr<std::unique_ptr<Transport>> Create(const TransportOptions& options = {});
  virtual ~Transport() = default;

  // e.g. "ucx(tcp,sm,self)".
  virtual std::string name() const = 0;
  // Registers [addr, addr + length). InvalidArgument for null/empty ranges; FailedPrecondition for
  // a memory kind this transport cannot reach (CUDA memory on a UCX without CUDA: use the
  // host-staged path, staged_gpu.h).
  virtual absl::StatusOr<std::unique_ptr<RegisteredMemory>> Register(void* addr, size_t length,
                                                                     MemoryKind kind) = 0;
  // Allocates `length` bytes of host memory through the transport and registers it; freed when the
  // registration is destroyed. Prefer it for long-lived pools: UCX places it where its fastest
  // transports reach it directly (e.g. a shared-memory segment peers of this node map), which
  // caller memory from Register cannot offer.
  virtual absl::StatusOr<std::unique_ptr<RegisteredMemory>> Allocate(size_t length) = 0;
  // This transport's address: opaque bytes a peer passes to Connect.
  virtual std::string address() const = 0;
  // Connects to the peer whose address() is `peer_address`. InvalidArgument for damaged bytes;
  // Unavailable when the peer cannot be reached.
  virtual absl::StatusOr<std::unique_ptr<TransportEndpoint>> Connect(
      std::string_view peer_address) = 0;
};

}  // namespace pagoda
