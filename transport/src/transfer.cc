#include "pagoda/transport/transfer.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace pagoda {
namespace internal {

TransferState::TransferState(size_t num_ops, TransferCallback callback)
    : results_(num_ops), callback_(std::move(callback)) {}

void TransferState::SetResult(size_t i, absl::Status status) {
  absl::MutexLock lock(&mu_);
  if (done_ || i >= results_.size()) return;
  if (results_[i].ok()) results_[i] = std::move(status);
}

void TransferState::FailAll(const absl::Status& status) {
  absl::MutexLock lock(&mu_);
  if (done_) return;
  for (auto& r : results_) {
    if (r.ok()) r = status;
  }
}

void TransferState::Finish() {
  TransferCallback cb;
  {
    absl::MutexLock lock(&mu_);
    if (done_) return;
    done_ = true;
    cb = std::move(callback_);
  }
  // results_ is frozen once done_ is set, so the callback reads it without the lock.
  if (cb) std::move(cb)(results_);
}

bool TransferState::done() const {
  absl::MutexLock lock(&mu_);
  return done_;
}

const std::vector<absl::Status>& TransferState::Wait() const {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(&done_));
  return results_;
}

bool TransferState::WaitFor(absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithTimeout(absl::Condition(&done_), timeout);
}

}  // namespace internal

absl::Status TransferFuture::WaitAll() const {
  const auto& results = Wait();
  for (size_t i = 0; i < results.size(); ++i) {
    if (!results[i].ok()) {
      return absl::Status(results[i].code(), absl::StrCat("transfer op ", i, " of ", results.size(),
                                                          ": ", results[i].message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace pagoda
