// The local zero-copy data path of pagodad: a unix socket that hands each client the memfd of its
// own tenant's host pages (pagoda::Store::TenantArenaFd) and serves the small Reserve / Commit /
// Abort / Acquire / Release records of pagoda/service/local_protocol.h. Page bytes never cross the
// socket, and a client maps no other tenant's bytes.
//
// Each connection is bound to one tenant (at Hello) and owns its reservations and leases: it can
// only commit, abort or release its own, and when it closes (or the server stops) the server
// aborts / releases whatever it left open, so a crashed client never leaves a page half-visible
// or a slot leased.
//
// Bounded resources: one event thread watches every connection and assembles frames without
// blocking; a fixed pool of worker threads serves complete frames. An idle connection holds no
// thread. Connections past `max_connections` are refused at accept; a connection that has not
// said Hello within `handshake_timeout`, that stalls mid-frame (or does not take its reply) for
// `io_timeout`, or that sits idle for `reservation_timeout` while holding reservations is closed.
// The socket file is mode 0660 (optionally of a given group); the peer's uid/gids (SO_PEERCRED,
// SO_PEERGROUPS) are checked against an optional allow-list and logged.
//
// Thread safety: Start/Stop from one thread; the server's own threads serve connections.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "auth.h"
#include "metrics.h"
#include "pagoda/kvstore/store.h"

namespace pagoda::service {

struct LocalServerOptions {
  int max_connections = 256;  // open connections; more are refused at accept
  int threads = 4;            // workers serving requests
  absl::Duration handshake_timeout = absl::Seconds(5);
  absl::Duration io_timeout = absl::Seconds(5);
  absl::Duration reservation_timeout = absl::Seconds(60);
  size_t max_open_per_connection = 1 << 16;  // reservations + leases one client may hold
  uint64_t instance_id = 0;                  // reported in Hello replies
  std::string socket_group;                  // group of the socket file; "" = pagodad's own
  // Peers allowed to connect: uid in allowed_uids, or primary/supplementary gid in allowed_gids.
  // Both empty: any peer that can open the socket file (mode 0660).
  std::vector<uint32_t> allowed_uids;
  std::vector<uint32_t> allowed_gids;
};

class LocalServer {
 public:
  LocalServer(Store* store, const Authorizer* auth, ServiceMetrics* metrics,
              LocalServerOptions options);
  ~LocalServer();  // Stops.

  // Listens on `path` (replacing a stale socket file; mode 0660, group socket_group) and starts
  // serving. InvalidArgument for an unknown group; Unavailable when the socket cannot be bound.
  absl::Status Start(const std::string& path);
  // Stops accepting, lets the requests being served finish, closes every connection (aborting and
  // releasing what they left open) and removes the socket file.
  void Stop();

  int connections() const { return active_.load(); }

 private:
  struct Connection;
  void EventLoop();
  void Worker();
  void Accept();
  // Reads what a connection has without blocking; true when a whole frame is assembled.
  bool ReadFrame(Connection& c, absl::Status* error);
  // Serves one assembled frame; false when the connection must close.
  bool Handle(Connection& c);
  void Rearm(const std::shared_ptr<Connection>& c);
  // Closes a connection and aborts / releases what it left open.
  void Close(const std::shared_ptr<Connection>& c, const absl::Status& why);
  void SweepDeadlines();

  Store* const store_;
  const Authorizer* const auth_;
  ServiceMetrics* const metrics_;
  const LocalServerOptions options_;
  std::string path_;
  int listen_fd_ = -1;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;  // eventfd: wakes the event loop for Stop
  std::atomic<bool> stopping_{false};
  std::atomic<int> active_{0};
  std::thread loop_;
  absl::Time last_refusal_log_ = absl::InfinitePast();  // event loop thread only
  uint64_t refusals_unlogged_ = 0;                      // event loop thread only
  std::vector<std::thread> workers_;

  absl::Mutex mu_;
  absl::flat_hash_map<int, std::shared_ptr<Connection>> conns_ ABSL_GUARDED_BY(mu_);  // by fd
  std::deque<std::shared_ptr<Connection>> ready_ ABSL_GUARDED_BY(mu_);  // frames to serve
  bool workers_stop_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace pagoda::service
