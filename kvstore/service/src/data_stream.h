// The TCP side of pagodad's stream data path (issue 15): listens on the data port, greets each
// connection with a StreamHello carrying a random ticket, and hands a connection to the gRPC
// handler whose StreamGet / StreamPut names its ticket, for the length of one batch. The page
// bytes of that batch then cross the connection (see pagoda/service/stream_wire.h).
//
// A connection is bound to the tenant of the first call that claims it; a call of another tenant
// is refused. The ticket is a capability: only the peer that connected has read it. The bytes
// travel in clear (gRPC's TLS does not cover them): serve the port on trusted networks only, or
// turn it off (server.data_port: -1).
//
// Thread safety: all methods are safe for concurrent use.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <string_view>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace pagoda::service {

struct DataStreamOptions {
  int max_connections = 256;  // a new connection past this is closed at once
  // Send/receive timeout of every socket call: a peer that stalls mid-batch fails the batch.
  absl::Duration io_timeout = absl::Seconds(30);
  uint64_t instance_id = 0;  // sent in each StreamHello
};

class DataStreamServer {
 public:
  explicit DataStreamServer(DataStreamOptions options) : options_(options) {}
  ~DataStreamServer();  // Stops.

  // Listens on host:port (0 = a free port) and starts accepting.
  absl::Status Start(const std::string& host, int port);
  // Stops accepting and closes every connection (a batch in progress fails).
  void Stop();
  int port() const { return port_; }
  int connections() const;

  struct Connection;
  // One connection, held by one batch; the batch's socket I/O goes through fd(). Destroying the
  // claim returns the connection, or closes it after Fail() (any batch-level error: the stream
  // may hold unread or missing bytes).
  class Claim {
   public:
    Claim(DataStreamServer* server, std::shared_ptr<Connection> c)
        : server_(server), conn_(std::move(c)) {}
    ~Claim();
    Claim(const Claim&) = delete;
    Claim& operator=(const Claim&) = delete;
    int fd() const;
    void Fail() { failed_ = true; }

   private:
    DataStreamServer* server_;
    std::shared_ptr<Connection> conn_;
    bool failed_ = false;
  };

  // Claims the connection of `ticket` for `tenant`. NotFound for an unknown (or closed) ticket,
  // PermissionDenied when it is bound to another tenant, FailedPrecondition while another batch
  // holds it.
  absl::StatusOr<std::unique_ptr<Claim>> Acquire(const std::string& ticket,
                                                 const std::string& tenant);

 private:
  void AcceptLoop();
  void Close(const std::string& ticket);
  // Closes idle connections whose peer went away (to make room at max_connections).
  void SweepDead() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const DataStreamOptions options_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread acceptor_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Connection>> conns_ ABSL_GUARDED_BY(mu_);
};

}  // namespace pagoda::service
