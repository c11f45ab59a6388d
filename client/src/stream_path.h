// The stream data path of a remote client (issue 15): each batch is one gRPC call (StreamGet /
// StreamPut) while its page bytes cross a plain TCP connection to pagodad's data port, straight
// between the socket and the caller's buffers (see pagoda/service/stream_wire.h).
//
// Get: the call names a pooled connection by its ticket; the server leases the pages and writes
// one frame; the client receives each page into its output buffer and checks its checksum (a
// mismatch is retried once, then DataLoss). Put: the client checksums the pages, starts the call
// and writes the frame; the server receives into reserved slots, verifies and commits. Any
// batch-level error drops the connection (its stream may be out of step); the next batch opens
// a fresh one.
//
// Thread safety: safe for concurrent use; each batch holds its own connection.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "data_path.h"
#include "pagoda.grpc.pb.h"

namespace pagoda::client_internal {

class StreamPath final : public DataPath {
 public:
  // Connects one data connection to host:port (host: that of the gRPC target) to check the path
  // works. Unavailable when it cannot; FailedPrecondition when the server there is not the one
  // behind the gRPC channel (another instance id).
  static absl::StatusOr<std::unique_ptr<StreamPath>> Open(
      v1::Pagoda::Stub* stub, std::string tenant, std::function<void(grpc::ClientContext*)> prepare,
      std::string host, int port, uint64_t instance_id, absl::Duration io_timeout);
  ~StreamPath() override;

  const char* name() const override { return "stream"; }
  std::vector<absl::Status> Put(absl::Span<const PutPage> pages) override;
  std::vector<GetResult> Get(absl::Span<const GetPage> pages) override;

  // The host part of a gRPC target ("host:port", "[v6]:port", "dns:///host:port"); "" if none.
  static std::string TargetHost(const std::string& target);

 private:
  struct Conn;
  StreamPath(v1::Pagoda::Stub* stub, std::string tenant,
             std::function<void(grpc::ClientContext*)> prepare, std::string host, int port,
             uint64_t instance_id, absl::Duration io_timeout);
  absl::StatusOr<std::unique_ptr<Conn>> Take();
  absl::StatusOr<std::unique_ptr<Conn>> Dial();
  void Give(std::unique_ptr<Conn> c);
  // After the server restarted (a ticket it does not know, a refused connect): drops the pooled
  // connections and learns the data port and instance id again from Health.
  void Reset();
  std::vector<absl::Status> PutOnce(absl::Span<const PutPage> pages);
  std::vector<GetResult> GetOnce(absl::Span<const GetPage> pages);

  v1::Pagoda::Stub* const stub_;
  const std::string tenant_;
  const std::function<void(grpc::ClientContext*)> prepare_;
  const std::string host_;
  int port_ ABSL_GUARDED_BY(mu_);
  uint64_t instance_id_ ABSL_GUARDED_BY(mu_);
  const absl::Duration io_timeout_;
  std::atomic<uint64_t> seq_{1};
  absl::Mutex mu_;
  std::vector<std::unique_ptr<Conn>> idle_ ABSL_GUARDED_BY(mu_);
};

}  // namespace pagoda::client_internal
