#include "task_pool.h"

#include <algorithm>

namespace pagoda::worker_internal {
namespace {

// One spin of a waiting thread: a pause, and every 64th a yield (on a machine with fewer cores
// than threads, the thread with work runs).
void Relax(int i) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
  if (i % 64 == 63) std::this_thread::yield();
}

}  // namespace

TaskPool::TaskPool(int threads) {
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { Work(); });
}

TaskPool::~TaskPool() {
  stop_.store(true);
  {
    absl::MutexLock l(&mu_);
    wake_.SignalAll();
  }
  for (std::thread& t : workers_) t.join();
}

void TaskPool::Run(int64_t n, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  if (workers_.empty() || n == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  constexpr int64_t kMaxLoop = int64_t{1} << 31;  // iterations one published word can count
  if (n > kMaxLoop) {
    for (int64_t base = 0; base < n; base += kMaxLoop) {
      Run(std::min(kMaxLoop, n - base), [&](int64_t i) { fn(base + i); });
    }
    return;
  }
  // The word is closed under the last loop's number (since that loop ended, or at start): a
  // thread still holding an earlier value fails its compare-and-swap, so it never pairs that
  // value with this loop's count. Threads see the new number only once the loop is open (a
  // thread that saw it closed would count the loop as seen and wait for the next one).
  const uint64_t last = word_.load();
  const uint32_t loop = LoopOf(last) + 1;
  end_.store(n);
  done_.store(0);
  fn_.store(&fn);
  word_.store(static_cast<uint64_t>(loop) << 32);  // open: iteration 0 is next
  if (sleepers_.load() > 0) {
    absl::MutexLock l(&mu_);
    wake_.SignalAll();
  }
  Drain(loop);
  for (int i = 0; done_.load() < n; ++i) Relax(i);
  word_.store((static_cast<uint64_t>(loop) << 32) | kClosed);
  fn_.store(nullptr);
}

void TaskPool::Drain(uint32_t loop) {
  uint64_t w = word_.load();
  for (;;) {
    if (LoopOf(w) != loop) return;
    const uint64_t next = w & kClosed;
    if (next >= static_cast<uint64_t>(end_.load())) return;  // kClosed is never below it
    if (!word_.compare_exchange_weak(w, w + 1)) continue;    // w is reloaded
    // Iteration `next` of `loop` is ours: the loop cannot end (nor fn_ change) before it returns.
    (*fn_.load())(static_cast<int64_t>(next));
    done_.fetch_add(1);
    w = word_.load();
  }
}

bool TaskPool::AwaitLoop(uint32_t seen) {
  const absl::Time spin_until = absl::Now() + kSpin;
  for (int i = 0;; ++i) {
    if (stop_.load()) return false;
    if (LoopOf(word_.load()) != seen) return true;
    if (i % 256 == 255 && absl::Now() > spin_until) break;
    Relax(i);
  }
  absl::MutexLock l(&mu_);
  sleepers_.fetch_add(1);  // before the word is read again: Run sees a sleeper or we see the loop
  while (!stop_.load() && LoopOf(word_.load()) == seen) wake_.Wait(&mu_);
  sleepers_.fetch_sub(1);
  return !stop_.load();
}

void TaskPool::Work() {
  uint32_t seen = 0;  // the word's loop before the first Run (a thread may start after it)
  while (AwaitLoop(seen)) {
    seen = LoopOf(word_.load());
    Drain(seen);
  }
}

}  // namespace pagoda::worker_internal
