// Server-side deadlines for gRPC calls that hold resources while they wait on their client: a
// Put stream holds host reservations between chunks. A watched call that makes no progress
// (Touch) for `idle_timeout` is cancelled (grpc::ServerContext::TryCancel), so its handler's next
// Read fails and it aborts what it holds. The same thread runs a periodic `tick` (e.g. expiring
// UCX reservations when no UCX call comes).
//
// Thread safety: Watch / Touch / the Scope destructor are safe from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace grpc {
class ServerContext;
}

namespace pagoda::service {

class CallWatchdog {
 public:
  CallWatchdog(absl::Duration idle_timeout, std::function<void()> tick = nullptr);
  ~CallWatchdog();  // stops its thread; no call may still be watched

  // Watches `ctx` until the Scope dies (which must happen before the handler returns).
  class Scope {
   public:
    Scope(CallWatchdog* dog, grpc::ServerContext* ctx);  // dog may be null: no watching
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;
    void Touch();  // the call made progress

   private:
    CallWatchdog* dog_;
    uint64_t id_ = 0;
  };

  uint64_t cancelled() const;  // calls cancelled so far

 private:
  struct Watched {
    grpc::ServerContext* ctx;
    absl::Time last;
    bool cancelled = false;
  };
  void Run();

  const absl::Duration idle_timeout_;
  const std::function<void()> tick_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, Watched> calls_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t cancelled_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace pagoda::service
