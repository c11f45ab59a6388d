// Internal: a fixed set of threads that runs the iterations of one loop at a time.
//
// The decode worker selects on the host for each sequence of a batch independently (each
// (sequence, layer) has its own selector); Run spreads those iterations over the pool's threads and
// the caller's, and returns when all are done. Iterations must not touch shared state.
//
// Thread safety: Run from one thread at a time (the worker's).
#ifndef PAGODA_CLIENT_WORKER_TASK_POOL_H_
#define PAGODA_CLIENT_WORKER_TASK_POOL_H_

#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace pagoda::worker_internal {

class TaskPool {
 public:
  // `threads` threads run iterations, the caller of Run among them (threads - 1 are started);
  // threads <= 1 runs every loop on the caller.
  explicit TaskPool(int threads);
  ~TaskPool();
  TaskPool(const TaskPool&) = delete;
  TaskPool& operator=(const TaskPool&) = delete;

  // Calls fn(i) for i in [0, n), each once, on any of the threads; returns when all returned.
  void Run(int64_t n, const std::function<void(int64_t)>& fn);
  int threads() const { return static_cast<int>(workers_.size()) + 1; }

 private:
  void Work();
  // Takes and runs iterations of the current loop until none is left.
  void Drain(uint64_t loop);

  absl::Mutex mu_;
  const std::function<void(int64_t)>* fn_ ABSL_GUARDED_BY(mu_) = nullptr;
  uint64_t loop_ ABSL_GUARDED_BY(mu_) = 0;  // the current loop's number
  int64_t next_ ABSL_GUARDED_BY(mu_) = 0;   // its next iteration
  int64_t end_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t running_ ABSL_GUARDED_BY(mu_) = 0;  // iterations taken and not yet returned
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace pagoda::worker_internal

#endif  // PAGODA_CLIENT_WORKER_TASK_POOL_H_
