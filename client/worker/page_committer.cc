#include "page_committer.h"

namespace pagoda::worker_internal {

PageCommitter::PageCommitter(Store* store, std::string tenant, PageLayout layout)
    : store_(store), tenant_(std::move(tenant)), layout_(layout), thread_([this] { Run(); }) {}

PageCommitter::~PageCommitter() {
  {
    absl::MutexLock l(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void PageCommitter::Enqueue(uint64_t sequence, const PageKey& key, std::vector<uint8_t> bytes,
                            WriteOptions options) {
  absl::MutexLock l(&mu_);
  mu_.Await(absl::Condition(
      +[](PageCommitter* c)
           ABSL_NO_THREAD_SAFETY_ANALYSIS { return c->queued_bytes_ < kMaxQueuedBytes; },
      this));
  queued_bytes_ += bytes.size();
  queue_.push_back(Job{sequence, key, std::move(bytes), options, {}});
  ++in_flight_;
}

void PageCommitter::EnqueueCommit(uint64_t sequence, uint64_t reservation_id, uint64_t bytes) {
  absl::MutexLock l(&mu_);
  mu_.Await(absl::Condition(
      +[](PageCommitter* c)
           ABSL_NO_THREAD_SAFETY_ANALYSIS { return c->queued_bytes_ < kMaxQueuedBytes; },
      this));
  queued_bytes_ += bytes;
  Job job;
  job.sequence = sequence;
  job.reservation = reservation_id;
  job.reserved_bytes = bytes;
  queue_.push_back(std::move(job));
  ++in_flight_;
}

void PageCommitter::Prefetch(std::vector<PageKey> keys) {
  absl::MutexLock l(&mu_);
  Job job;
  job.prefetch = std::move(keys);
  queue_.push_back(std::move(job));
  ++in_flight_;
}

std::vector<uint8_t> PageCommitter::TakeBuffer() {
  {
    absl::MutexLock l(&mu_);
    if (!spare_.empty()) {
      std::vector<uint8_t> b = std::move(spare_.back());
      spare_.pop_back();
      return b;
    }
  }
  return std::vector<uint8_t>(layout_.PageBytes());
}

std::vector<std::pair<uint64_t, absl::Status>> PageCommitter::Drain() {
  absl::MutexLock l(&mu_);
  mu_.Await(absl::Condition(
      +[](int64_t* n) { return *n == 0; }, &in_flight_));
  return std::exchange(failures_, {});
}

void PageCommitter::Run() {
  for (;;) {
    Job job;
    {
      absl::MutexLock l(&mu_);
      mu_.Await(absl::Condition(
          +[](PageCommitter* c)
               ABSL_NO_THREAD_SAFETY_ANALYSIS { return c->stop_ || !c->queue_.empty(); },
          this));
      if (queue_.empty()) return;  // stopping and drained
      job = std::move(queue_.front());
      queue_.pop_front();
      queued_bytes_ -= job.bytes.size() + job.reserved_bytes;
    }
    if (job.reservation != 0) {
      const absl::Status s = store_->Commit(job.reservation);
      absl::MutexLock l(&mu_);
      if (!s.ok()) {
        failures_.emplace_back(job.sequence, s);
      } else {
        ++committed_;
        bytes_ += job.reserved_bytes;
      }
      --in_flight_;
      continue;
    }
    if (!job.prefetch.empty()) {
      // Best effort: a full host tier only means the hint is not followed.
      (void)store_->Prefetch(tenant_, job.prefetch, Tier::kHost);
      absl::MutexLock l(&mu_);
      --in_flight_;
      continue;
    }
    absl::Status s = store_->Put(tenant_, job.key, layout_, job.bytes, job.options);
    // Chained keys commit to the whole prefix: a stored page under this key has these bytes.
    const bool reused = absl::IsAlreadyExists(s);
    if (reused) s = job.options.pin ? store_->Pin(tenant_, job.key) : absl::OkStatus();
    absl::MutexLock l(&mu_);
    if ((spare_.size() + 1) * layout_.PageBytes() <= kMaxSpareBytes &&
        job.bytes.size() == layout_.PageBytes()) {
      spare_.push_back(std::move(job.bytes));
    }
    if (!s.ok()) {
      failures_.emplace_back(job.sequence, s);
    } else if (reused) {
      ++reused_;
    } else {
      ++committed_;
      bytes_ += job.bytes.size();
    }
    --in_flight_;
  }
}

int64_t PageCommitter::committed() const {
  absl::MutexLock l(&mu_);
  return committed_;
}
int64_t PageCommitter::reused() const {
  absl::MutexLock l(&mu_);
  return reused_;
}
uint64_t PageCommitter::bytes() const {
  absl::MutexLock l(&mu_);
  return bytes_;
}

}  // namespace pagoda::worker_internal
