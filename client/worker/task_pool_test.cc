#include "task_pool.h"

#include <atomic>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace pagoda::worker_internal {
namespace {

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
  std::atomic<int> inside{0}, most{0};
  // Each iteration waits (bounded) for a second one to be inside: with 3 threads two are.
  pool.Run(6, [&](int64_t) {
    const int now = inside.fetch_add(1) + 1;
    int seen = most.load();
    while (seen < now && !most.compare_exchange_weak(seen, now)) {
    }
    for (int spin = 0; spin < 2000 && inside.load() < 2; ++spin) std::this_thread::yield();
    inside.fetch_sub(1);
  });
  EXPECT_GE(most.load(), 2);
}

}  // namespace
}  // namespace pagoda::worker_internal
