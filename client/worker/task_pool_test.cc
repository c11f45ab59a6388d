#include "task_pool.h"

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace pagoda::worker_internal {
namespace {

// Iterations that record how many of them ran at once (`most`), each waiting until two were
// seen inside together (bounded by time, not spins: a thread just started may take a while under
// a sanitizer).
struct Overlap {
  std::atomic<int> inside{0}, most{0};
  void Iteration() {
    const int now = inside.fetch_add(1) + 1;
    int seen = most.load();
    while (seen < now && !most.compare_exchange_weak(seen, now)) {
    }
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (most.load() < 2 && inside.load() < 2 && std::chrono::steady_clock::now() < until) {
      std::this_thread::yield();
    }
    inside.fetch_sub(1);
  }
};

TEST(TaskPool, EveryIterationRunsOnceLoopAfterLoop) {
  for (int threads : {1, 2, 4}) {
    TaskPool pool(threads);
    EXPECT_EQ(pool.threads(), threads);
    pool.Run(0, [](int64_t) { ADD_FAILURE() << "no iteration to run"; });
    for (int64_t n : {1, 2, 3, 17, 200}) {
      for (int loop = 0; loop < 20; ++loop) {
        std::vector<std::atomic<int>> calls(n);
        pool.Run(n, [&](int64_t i) { calls[i].fetch_add(1); });
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(calls[i].load(), 1) << threads << " " << n;
      }
    }
  }
}

TEST(TaskPool, IterationsRunOnSeveralThreads) {
  TaskPool pool(3);
  Overlap overlap;  // with 3 threads, two iterations run at once
  pool.Run(6, [&](int64_t) { overlap.Iteration(); });
  EXPECT_GE(overlap.most.load(), 2);
}

// Loop after loop, each of two iterations waits for the other to be running: every loop must
// reach the pool's thread (a thread that took a new loop's number for a loop it had seen, e.g.
// while the loop was being set up, would sit out that loop and leave the caller alone).
TEST(TaskPool, EveryLoopReachesTheOtherThread) {
  TaskPool pool(2);
  int alone = 0;
  for (int loop = 0; loop < 300; ++loop) {
    std::atomic<int> inside{0};
    std::atomic<bool> met{false};
    pool.Run(2, [&](int64_t) {
      inside.fetch_add(1);
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
      while (inside.load() < 2 && std::chrono::steady_clock::now() < until) {
        std::this_thread::yield();
      }
      if (inside.load() == 2) met.store(true);
    });
    if (!met.load()) ++alone;
  }
  EXPECT_EQ(alone, 0);
}

TEST(TaskPool, ThreadsAsleepWakeForTheNextLoop) {
  TaskPool pool(3);
  for (int round = 0; round < 3; ++round) {
    // Past the spin: the threads sleep, and the next loop must still reach them.
    std::this_thread::sleep_for(absl::ToChronoMilliseconds(TaskPool::kSpin * 3));
    Overlap overlap;
    std::vector<std::atomic<int>> calls(8);
    pool.Run(8, [&](int64_t i) {
      calls[i].fetch_add(1);
      overlap.Iteration();
    });
    for (int i = 0; i < 8; ++i) ASSERT_EQ(calls[i].load(), 1) << round;
    EXPECT_GE(overlap.most.load(), 2) << "a sleeping thread never woke, round " << round;
  }
}

TEST(TaskPool, NoIterationRunsAfterItsLoopReturned) {
  // Many short loops back to back: a thread late from one loop must not take an iteration of the
  // next with the last loop's count, nor run anything once Run returned.
  TaskPool pool(4);
  std::atomic<bool> open{false};
  std::atomic<int> strays{0};
  for (int loop = 0; loop < 3000; ++loop) {
    const int64_t n = 1 + loop % 7;
    std::vector<std::atomic<int>> calls(n);
    open.store(true);
    pool.Run(n, [&](int64_t i) {
      if (!open.load()) strays.fetch_add(1);
      calls[i].fetch_add(1);
    });
    open.store(false);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(calls[i].load(), 1) << loop;
  }
  EXPECT_EQ(strays.load(), 0);
}

TEST(TaskPool, DestroyedWhileThreadsSpinOrSleep) {
  for (int wait_ms : {0, 10}) {
    TaskPool pool(3);
    std::atomic<int> sum{0};
    pool.Run(5, [&](int64_t i) { sum.fetch_add(static_cast<int>(i)); });
    EXPECT_EQ(sum.load(), 10);
    std::this_thread::sleep_for(std::chrono::milliseconds(wait_ms));
  }  // joins: the destructor wakes spinning and sleeping threads alike
}

}  // namespace
}  // namespace pagoda::worker_internal
