#include "transport/src/ucx_worker.h"

#include <sys/epoll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "transport/src/ucx_status.h"

namespace pagoda::internal {

absl::StatusOr<std::unique_ptr<UcxWorker>> UcxWorker::Create(ucp_context_h context,
                                                             absl::Duration spin_before_sleep) {
  std::unique_ptr<UcxWorker> w(new UcxWorker());
  w->spin_ = spin_before_sleep;
  ucp_worker_params_t params{};
  params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  params.thread_mode = UCS_THREAD_MODE_SINGLE;  // only the progress thread touches it
  ucs_status_t st = ucp_worker_create(context, &params, &w->worker_);
  if (st != UCS_OK) return FromUcs(st, "ucp_worker_create");

  ucp_address_t* addr = nullptr;
  size_t addr_len = 0;
  st = ucp_worker_get_address(w->worker_, &addr, &addr_len);
  if (st != UCS_OK) {
    ucp_worker_destroy(w->worker_);
    w->worker_ = nullptr;
    return FromUcs(st, "ucp_worker_get_address");
  }
  w->address_.assign(reinterpret_cast<const char*>(addr), addr_len);
  ucp_worker_release_address(w->worker_, addr);

  int efd = -1;
  st = ucp_worker_get_efd(w->worker_, &efd);
  if (st != UCS_OK) efd = -1;  // no wakeup support: the loop naps instead of sleeping on an fd
  if (efd < 0) {
    UcxWorker* raw = w.get();
    w->thread_ = std::thread([raw] { raw->Loop(); });
    return w;
  }
  w->epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = efd;
  if (w->epoll_fd_ < 0 || epoll_ctl(w->epoll_fd_, EPOLL_CTL_ADD, efd, &ev) != 0) {
    int err = errno;
    if (w->epoll_fd_ >= 0) close(w->epoll_fd_);
    ucp_worker_destroy(w->worker_);
    w->worker_ = nullptr;
    return absl::InternalError(absl::StrCat("epoll on the UCX event fd: ", std::strerror(err)));
  }
  UcxWorker* raw = w.get();
  w->thread_ = std::thread([raw] { raw->Loop(); });
  return w;
}

UcxWorker::~UcxWorker() {
  if (thread_.joinable()) {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    if (epoll_fd_ >= 0) ucp_worker_signal(worker_);
    thread_.join();
  }
  if (epoll_fd_ >= 0) close(epoll_fd_);
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
}

void UcxWorker::Post(absl::AnyInvocable<void() &&> fn) {
  {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(fn));
  }
  if (epoll_fd_ >= 0) ucp_worker_signal(worker_);  // thread-safe by UCX's contract
}

void UcxWorker::Run(absl::AnyInvocable<void() &&> fn) {
  if (OnProgressThread()) {
    std::move(fn)();
    return;
  }
  absl::Notification done;
  Post([&fn, &done]() mutable {
    std::move(fn)();
    done.Notify();
  });
  done.WaitForNotification();
}

void UcxWorker::Loop() {
  std::vector<absl::AnyInvocable<void() &&>> work;
  absl::Time last_activity = absl::Now();
  absl::Time last_tick = last_activity;
  for (;;) {
    bool stop;
    {
      absl::MutexLock lock(&mu_);
      work.swap(queue_);
      stop = stop_;
    }
    for (auto& fn : work) std::move(fn)();
    bool had_work = !work.empty();
    work.clear();
    if (stop && !had_work) return;

    unsigned progressed = 0;
    while (ucp_worker_progress(worker_) != 0) ++progressed;

    bool busy = busy_.load(std::memory_order_relaxed) > 0;
    absl::Time now = absl::Now();
    if (busy && tick_ && now - last_tick >= absl::Milliseconds(1)) {
      last_tick = now;
      tick_(now);
    }
    if (progressed > 0 || had_work) {
      last_activity = now;
      continue;
    }
    if (busy || now - last_activity < spin_) continue;

    if (epoll_fd_ < 0) {
      absl::SleepFor(absl::Microseconds(50));
      continue;
    }
    // Idle: sleep until UCX or Post signals the event fd.
    ucs_status_t st = ucp_worker_arm(worker_);
    if (st == UCS_ERR_BUSY) continue;  // events arrived meanwhile
    {
      absl::MutexLock lock(&mu_);
      if (!queue_.empty() || stop_) continue;
    }
    epoll_event ev;
    // A bounded sleep keeps deadline checks alive even if a transport misses an event.
    epoll_wait(epoll_fd_, &ev, 1, 100);
    last_activity = absl::Now();
  }
}

}  // namespace pagoda::internal
