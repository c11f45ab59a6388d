// Internal: a fixed set of threads that runs the iterations of one loop at a time.
//
// The decode worker selects on the host for each sequence of a batch independently (each
// (sequence, layer) has its own selector) and resolves each KV head's pool slots independently;
// Run spreads those iterations over the pool's threads and the caller's, and returns when all are
// done. Iterations must not touch shared state.
//
// An engine calls Run several times per layer, back to back, with loops of a few hundred
// microseconds, so the hand-off must cost microseconds, not a wake-up: a loop is published in
// one atomic word (its number and its next iteration; threads claim iterations by compare-and-
// swap) and a thread that finished a loop watches that word for kSpin before it sleeps. While an
// engine steps the threads stay awake between layers; idle, they sleep on a condition variable.
// (A mutex-and-condition hand-off cost ~0.25 ms per Run on an H100 host, bench/RESULTS.md.)
//
// Thread safety: Run from one thread at a time (the worker's).
#ifndef PAGODA_CLIENT_WORKER_TASK_POOL_H_
#define PAGODA_CLIENT_WORKER_TASK_POOL_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

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

  // How long a thread that finished a loop watches for the next one before it sleeps.
  static constexpr absl::Duration kSpin = absl::Milliseconds(2);

 private:
  // The published word: the loop's number in the high 32 bits, its next iteration in the low 32.
  // kClosed as "next" means no iteration can be taken: between loops the word holds the last
  // loop's number, closed (a new number is only ever published open).
  static constexpr uint64_t kClosed = 0xffffffffULL;
  static uint32_t LoopOf(uint64_t word) { return static_cast<uint32_t>(word >> 32); }

  void Work();
  // Runs iterations of loop `loop` until none is left to take.
  void Drain(uint32_t loop);
  // Waits (spinning, then asleep) until a loop other than `seen` is published or the pool stops;
  // false when it stops.
  bool AwaitLoop(uint32_t seen);

  std::atomic<uint64_t> word_{kClosed};
  std::atomic<int64_t> end_{0};   // the current loop's iteration count
  std::atomic<int64_t> done_{0};  // its iterations returned
  std::atomic<const std::function<void(int64_t)>*> fn_{nullptr};
  std::atomic<bool> stop_{false};
  std::atomic<int> sleepers_{0};
  absl::Mutex mu_;  // only to sleep and wake
  absl::CondVar wake_;
  std::vector<std::thread> workers_;
};

}  // namespace pagoda::worker_internal

#endif  // PAGODA_CLIENT_WORKER_TASK_POOL_H_
