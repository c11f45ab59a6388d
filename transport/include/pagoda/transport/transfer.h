// One batch of one-sided transfers and its asynchronous completion.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace pagoda {

// Where a registration lives. Transports that cannot reach a kind refuse to register it.
enum class MemoryKind : uint8_t { kHost = 1, kCuda = 2 };

enum class TransferDirection : uint8_t {
  kRead,   // remote -> local
  kWrite,  // local -> remote
};

// One contiguous piece of a batch: `length` bytes between `local` (host memory of this process,
// valid until the batch completes) and `remote_offset` within the remote registration.
struct TransferOp {
  void* local = nullptr;
  uint64_t remote_offset = 0;
  uint64_t length = 0;
};

// Called once on the transport's progress thread when a batch completes, with one status per op
// (in posting order). It must not block and must not wait on other transfers of the same transport.
using TransferCallback = absl::AnyInvocable<void(const std::vector<absl::Status>&) &&>;

namespace internal {

// Shared completion record of one batch. The transport sets results and then calls Finish() once;
// waiters read results only after Finish(). Safe for concurrent use.
class TransferState {
 public:
  TransferState(size_t num_ops, TransferCallback callback);

  // Records the outcome of op `i`. The first error recorded for an op wins. Ignored after Finish().
  void SetResult(size_t i, absl::Status status);
  // Sets `status` on every op that has no error yet (e.g. a write whose remote flush failed).
  void FailAll(const absl::Status& status);
  // Publishes the results, runs the callback, wakes waiters. Later calls are no-ops.
  void Finish();

  bool done() const;
  const std::vector<absl::Status>& Wait() const;
  // Returns false when `timeout` passed before the batch finished.
  bool WaitFor(absl::Duration timeout) const;

 private:
  mutable absl::Mutex mu_;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  // Written only before done_ is set (by the one completing thread), read only after.
  std::vector<absl::Status> results_;
  TransferCallback callback_;
};

}  // namespace internal

// The completion of one posted batch: per-op results, available once Done(). Copyable; all copies
// refer to the same batch. Safe for concurrent use.
class TransferFuture {
 public:
  TransferFuture() = default;
  explicit TransferFuture(std::shared_ptr<internal::TransferState> state)
      : state_(std::move(state)) {}

  bool valid() const { return state_ != nullptr; }
  // True when every op has completed (successfully or not).
  bool Done() const { return state_->done(); }
  // Blocks until the batch completes; returns one status per op, in posting order. An op reported
  // OK has fully completed: for a read its bytes are in local memory, for a write they are in
  // remote memory (flushed). An op with an error may have partially happened.
  const std::vector<absl::Status>& Wait() const { return state_->Wait(); }
  // Like Wait(), but gives up after `timeout` (returns false; the batch stays in flight).
  bool WaitFor(absl::Duration timeout) const { return state_->WaitFor(timeout); }
  // Waits, then returns OK when every op succeeded, else the first error (with the op index).
  absl::Status WaitAll() const;

 private:
  std::shared_ptr<internal::TransferState> state_;
};

}  // namespace pagoda
