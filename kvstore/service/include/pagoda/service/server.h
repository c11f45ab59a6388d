// pagodad in a library: the store engine, the gRPC API, the local zero-copy path and the HTTP
// /metrics + /healthz endpoint, started together from a ServiceConfig and stopped together.
//
// Thread safety: Start, Shutdown and the accessors may be called from any one thread; the
// server's own threads serve requests concurrently.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "pagoda/service/config.h"

namespace pagoda::service {

class Server {
 public:
  // Opens the store (creating data_dir), then binds the gRPC port, the local socket and the HTTP
  // port. Any failure stops what was started and is returned (e.g. Unavailable for a port in
  // use, InvalidArgument for a bad config).
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServiceConfig& config);

  virtual ~Server() = default;  // Shuts down with a short grace period if still running.

  virtual int grpc_port() const = 0;             // the bound port (useful with port 0)
  virtual int http_port() const = 0;             // -1 when HTTP is off
  virtual std::string local_socket() const = 0;  // "" when the local path is off

  // Graceful stop: /healthz turns 503, new calls are refused, in-flight calls get `grace` to
  // finish (then are cancelled), local clients are closed (their open reservations aborted, leases
  // released) and the store is flushed. Idempotent; returns the flush status.
  virtual absl::Status Shutdown(absl::Duration grace) = 0;
};

}  // namespace pagoda::service
