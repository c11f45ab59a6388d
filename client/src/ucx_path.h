// The UCX data path of a remote client (issue 6): gRPC carries only control (UcxAcquire /
// UcxRelease / UcxReserve / UcxCommit), page bytes move by one-sided UCX reads and writes of
// pagodad's host arena.
//
// Get: lease the slots -> read them straight into the caller's buffers -> verify each page's
// checksum (a mismatch, e.g. a lease that ran out and a slot reused, is retried; a page never
// comes back with wrong bytes) -> release the leases. Put: reserve slots -> write the bytes ->
// commit (the server checksums every slot before publishing; a failed write is aborted).
//
// Thread safety: safe for concurrent use. A lost connection is re-established on the next call.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "data_path.h"
#include "pagoda.grpc.pb.h"

namespace pagoda {
class Transport;
class TransportEndpoint;
class RemoteMemory;
}  // namespace pagoda

namespace pagoda::client_internal {

class UcxPath final : public DataPath {
 public:
  // Asks the server for its UCX worker address and arena key (UcxHello) and connects.
  // FailedPrecondition when the server offers no UCX path; Unavailable when it cannot be reached
  // over UCX. `prepare` sets deadline and credentials on each control call.
  static absl::StatusOr<std::unique_ptr<UcxPath>> Open(
      v1::Pagoda::Stub* stub, std::string tenant, std::function<void(grpc::ClientContext*)> prepare,
      absl::Duration op_timeout);
  ~UcxPath() override;

  const char* name() const override { return "ucx"; }
  std::vector<absl::Status> Put(absl::Span<const PutPage> pages) override;
  std::vector<GetResult> Get(absl::Span<const GetPage> pages) override;

 private:
  struct Connection;
  UcxPath(v1::Pagoda::Stub* stub, std::string tenant,
          std::function<void(grpc::ClientContext*)> prepare);
  // The current connection; reconnects (a fresh UcxHello) when the last one failed.
  absl::StatusOr<std::shared_ptr<Connection>> Conn();
  absl::StatusOr<std::shared_ptr<Connection>> Connect();
  std::vector<GetResult> GetOnce(absl::Span<const GetPage> pages);

  v1::Pagoda::Stub* const stub_;
  const std::string tenant_;
  const std::function<void(grpc::ClientContext*)> prepare_;
  std::unique_ptr<Transport> transport_;
  absl::Mutex mu_;
  std::shared_ptr<Connection> conn_ ABSL_GUARDED_BY(mu_);
};

}  // namespace pagoda::client_internal
