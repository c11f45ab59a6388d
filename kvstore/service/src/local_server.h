// The local zero-copy data path of pagodad: a unix socket that hands the host arena's memfd to
// clients on this machine and serves the small Reserve / Commit / Abort / Acquire / Release
// records of pagoda/service/local_protocol.h. Page bytes never cross the socket.
//
// Each connection is bound to one tenant (at Hello) and owns its reservations and leases: it can
// only commit, abort or release its own, and when it closes (or the server stops) the server
// aborts / releases whatever it left open, so a crashed client never leaves a page half-visible
// or a slot leased.
//
// Thread safety: Start/Stop from one thread. One thread serves each connection.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "auth.h"
#include "metrics.h"
#include "pagoda/kvstore/store.h"

namespace pagoda::service {

struct LocalServerOptions {
  int max_connections = 256;                 // further connections are refused at Hello
  size_t max_open_per_connection = 1 << 16;  // reservations + leases one client may hold
  uint64_t instance_id = 0;                  // reported in Hello replies
};

class LocalServer {
 public:
  LocalServer(Store* store, const Authorizer* auth, ServiceMetrics* metrics,
              LocalServerOptions options);
  ~LocalServer();  // Stops.

  // Listens on `path` (replacing a stale socket file) and starts accepting.
  absl::Status Start(const std::string& path);
  // Stops accepting, lets each connection finish the request it is serving, closes them (aborting
  // and releasing what they left open) and removes the socket file.
  void Stop();

  int connections() const { return active_.load(); }

 private:
  struct Connection;
  void AcceptLoop();
  void Serve(std::shared_ptr<Connection> conn);

  Store* const store_;
  const Authorizer* const auth_;
  ServiceMetrics* const metrics_;
  const LocalServerOptions options_;
  std::string path_;
  int listen_fd_ = -1;
  std::atomic<bool> stopping_{false};
  std::atomic<int> active_{0};
  std::thread acceptor_;

  absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<uint64_t, std::shared_ptr<Connection>> conns_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, std::thread> threads_ ABSL_GUARDED_BY(mu_);
  std::vector<uint64_t> finished_ ABSL_GUARDED_BY(mu_);  // ended; joined at the next accept
};

}  // namespace pagoda::service
