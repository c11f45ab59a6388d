// A UCP worker driven by one progress thread. Every call into the worker (endpoints, rkeys,
// transfers) runs on that thread, so the worker is created single-threaded and needs no locks;
// other threads hand work over through Post/Run.
#pragma once

#include <ucp/api/ucp.h>

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace pagoda::internal {

class UcxWorker {
 public:
  // `tick` runs on the progress thread about every millisecond while `busy()` work is in flight
  // (deadline checks).
  static absl::StatusOr<std::unique_ptr<UcxWorker>> Create(ucp_context_h context,
                                                           absl::Duration spin_before_sleep);
  ~UcxWorker();  // runs queued work, then stops the thread and destroys the worker

  ucp_worker_h handle() const { return worker_; }
  // Packed UCP worker address (for ucp_ep_create on the peer).
  const std::string& address() const { return address_; }

  // Queues `fn` to run on the progress thread; returns at once.
  void Post(absl::AnyInvocable<void() &&> fn);
  // Runs `fn` on the progress thread and waits for it (inline when already on it).
  void Run(absl::AnyInvocable<void() &&> fn);
  bool OnProgressThread() const { return std::this_thread::get_id() == thread_.get_id(); }

  // Progress-thread only: drives the worker until `done()` or `deadline`; true when done().
  template <typename Pred>
  bool ProgressUntil(Pred done, absl::Time deadline) {
    while (!done()) {
      if (absl::Now() > deadline) return false;
      ucp_worker_progress(worker_);
    }
    return true;
  }

  // In-flight work counter: while > 0 the thread busy-polls instead of sleeping.
  void AddBusy(int n) { busy_.fetch_add(n, std::memory_order_relaxed); }
  // Progress-thread only: called about every millisecond while busy.
  void SetTick(absl::AnyInvocable<void(absl::Time)> tick) { tick_ = std::move(tick); }

 private:
  UcxWorker() = default;
  void Loop();

  ucp_worker_h worker_ = nullptr;
  std::string address_;
  int epoll_fd_ = -1;
  absl::Duration spin_;
  std::atomic<int> busy_{0};
  absl::AnyInvocable<void(absl::Time)> tick_;  // progress thread only

  absl::Mutex mu_;
  std::vector<absl::AnyInvocable<void() &&>> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace pagoda::internal
