#include "call_watchdog.h"

#include <grpcpp/server_context.h>

#include "absl/time/clock.h"
#include "spdlog/spdlog.h"

namespace pagoda::service {

CallWatchdog::CallWatchdog(absl::Duration idle_timeout, std::function<void()> tick)
    : idle_timeout_(idle_timeout), tick_(std::move(tick)), thread_([this] { Run(); }) {}

CallWatchdog::~CallWatchdog() {
  {
    absl::MutexLock l(&mu_);
    stop_ = true;
  }
  thread_.join();
}

uint64_t CallWatchdog::cancelled() const {
  absl::MutexLock l(&mu_);
  return cancelled_;
}

void CallWatchdog::Run() {
  const absl::Duration period = std::min(absl::Milliseconds(100), idle_timeout_ / 4);
  for (;;) {
    {
      absl::MutexLock l(&mu_);
      const auto stopped = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stopped), period)) return;
      const absl::Time now = absl::Now();
      for (auto& [id, w] : calls_) {
        if (!w.cancelled && now - w.last > idle_timeout_) {
          // Under mu_: the handler is still inside its Scope, so the call has not finished.
          w.ctx->TryCancel();
          w.cancelled = true;
          cancelled_++;
          spdlog::warn("gRPC call {} made no progress for {}: cancelled, reservations aborted",
                       w.ctx->peer(), absl::FormatDuration(idle_timeout_));
        }
      }
    }
    if (tick_) tick_();
  }
}

CallWatchdog::Scope::Scope(CallWatchdog* dog, grpc::ServerContext* ctx) : dog_(dog) {
  if (dog_ == nullptr) return;
  absl::MutexLock l(&dog_->mu_);
  id_ = dog_->next_id_++;
  dog_->calls_[id_] = Watched{ctx, absl::Now()};
}

CallWatchdog::Scope::~Scope() {
  if (dog_ == nullptr) return;
  absl::MutexLock l(&dog_->mu_);
  dog_->calls_.erase(id_);
}

void CallWatchdog::Scope::Touch() {
  if (dog_ == nullptr) return;
  absl::MutexLock l(&dog_->mu_);
  auto it = dog_->calls_.find(id_);
  if (it != dog_->calls_.end()) it->second.last = absl::Now();
}

}  // namespace pagoda::service
