#include "task_pool.h"

namespace pagoda::worker_internal {

TaskPool::TaskPool(int threads) {
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { Work(); });
}

TaskPool::~TaskPool() {
  {
    absl::MutexLock l(&mu_);
    stop_ = true;
  }
  for (std::thread& t : workers_) t.join();
}

void TaskPool::Run(int64_t n, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  if (workers_.empty() || n == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  uint64_t loop;
  {
    absl::MutexLock l(&mu_);
    fn_ = &fn;
    loop = ++loop_;
    next_ = 0;
    end_ = n;
  }
  Drain(loop);
  absl::MutexLock l(&mu_);
  mu_.Await(absl::Condition(
      +[](TaskPool* p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(p->mu_) {
        return p->next_ >= p->end_ && p->running_ == 0;
      },
      this));
  fn_ = nullptr;
}

void TaskPool::Drain(uint64_t loop) {
  absl::MutexLock l(&mu_);
  while (loop_ == loop && next_ < end_) {
    const int64_t i = next_++;
    ++running_;
    const std::function<void(int64_t)>* fn = fn_;
    mu_.Unlock();
    (*fn)(i);
    mu_.Lock();
    --running_;
  }
}

void TaskPool::Work() {
  for (;;) {
    uint64_t loop;
    {
      absl::MutexLock l(&mu_);
      mu_.Await(absl::Condition(
          +[](TaskPool* p)
               ABSL_EXCLUSIVE_LOCKS_REQUIRED(p->mu_) { return p->stop_ || p->next_ < p->end_; },
          this));
      if (stop_) return;
      loop = loop_;
    }
    Drain(loop);
  }
}

}  // namespace pagoda::worker_internal
