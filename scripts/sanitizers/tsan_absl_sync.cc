// TSan builds only (PAGODA_SANITIZE=thread links this into every executable).
//
// Debian's abseil is not built with -fsanitize=thread, so TSan sees neither absl::Mutex's lock
// and unlock (atomics and futexes inside an uninstrumented library) nor abseil's own TSan
// annotations (compiled out there). Every member guarded by an absl::Mutex would then look racy.
// This file defines the exported entry points of absl::Mutex, absl::CondVar and
// absl::Notification in the executable, where they take precedence over the library's (abseil's
// own calls between them go through the PLT, so they land here too). Each one tells TSan what it
// acquires and releases, the way abseil does in a TSan build of its own, and forwards to the real
// function (dlsym RTLD_NEXT). Condition evaluation inside a wait runs with TSan's ignores on, as in
// abseil's annotations.
//
// The symbol names are abseil's mangled names in Debian 12's inline namespace (absl::debian3);
// a different abseil fails the static_assert below rather than interposing nothing.
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "absl/base/options.h"
#include "absl/time/time.h"

#define PAGODA_STR2(x) #x
#define PAGODA_STR(x) PAGODA_STR2(x)
static_assert(std::string_view(PAGODA_STR(ABSL_OPTION_INLINE_NAMESPACE_NAME)) == "debian3",
              "tsan_absl_sync.cc names abseil's symbols in Debian 12's inline namespace; "
              "update the mangled names for this abseil");

namespace {

template <typename Fn>
Fn Real(const char* symbol) {
  void* fn = dlsym(RTLD_NEXT, symbol);
  if (fn == nullptr) {
    std::fprintf(stderr, "tsan_absl_sync: %s not found in abseil\n", symbol);
    std::abort();
  }
  return reinterpret_cast<Fn>(fn);
}

// absl::Mutex is one std::atomic<intptr_t>; bit 0x8 (kMuWriter in mutex.cc) is set while a writer
// holds it. Waits (Await, CondVar::Wait) release and retake the mutex in the mode it is held in.
unsigned HeldMode(void* mu) {
  constexpr intptr_t kMuWriter = 0x0008;
  const intptr_t word = __atomic_load_n(static_cast<intptr_t*>(mu), __ATOMIC_RELAXED);
  return (word & kMuWriter) != 0 ? 0u : __tsan_mutex_read_lock;
}

template <typename Wait>
auto WaitReleasing(void* mu, Wait wait) {
  const unsigned mode = HeldMode(mu);
  __tsan_mutex_pre_unlock(mu, mode);
  auto result = wait();
  __tsan_mutex_post_unlock(mu, mode);
  __tsan_mutex_pre_lock(mu, mode);
  __tsan_mutex_post_lock(mu, mode, 0);
  return result;
}

template <typename Acquire>
auto Locking(void* mu, unsigned mode, Acquire acquire) {
  __tsan_mutex_pre_lock(mu, mode);
  auto result = acquire();
  __tsan_mutex_post_lock(mu, mode, 0);
  return result;
}

void Unlocking(void* mu, unsigned mode, void (*unlock)(void*)) {
  __tsan_mutex_pre_unlock(mu, mode);
  unlock(mu);
  __tsan_mutex_post_unlock(mu, mode);
}

// absl::Notification is {Mutex mutex_; std::atomic<bool> notified_yet_;}. Its inline
// HasBeenNotified() is an acquire load of notified_yet_ that TSan sees; the release store is in
// the library, so Notify() releases on that address for TSan.
void* NotifiedFlag(const void* notification) {
  return static_cast<char*>(const_cast<void*>(notification)) + sizeof(intptr_t);
}

using Cond = const void*;  // const absl::Condition&
using Void = void (*)(void*);
using Bool = bool (*)(void*);
using CondVoid = void (*)(void*, Cond);
using CondBool = bool (*)(void*, Cond);
using CondDuration = bool (*)(void*, Cond, absl::Duration);
using CondTime = bool (*)(void*, Cond, absl::Time);

}  // namespace

#define PAGODA_REAL(type, symbol) static const auto real = Real<type>(#symbol)

extern "C" {

// --- absl::Mutex ---
// Not here: LockWhenWithTimeout, ReaderLockWhenWithTimeout, AwaitWithTimeout and
// CondVar::WaitWithTimeout. Each tail-calls its *WithDeadline twin through the PLT, which lands
// below; annotating both would release and take the mutex twice for TSan.

void _ZN4absl7debian35Mutex4LockEv(void* mu) {
  PAGODA_REAL(Void, _ZN4absl7debian35Mutex4LockEv);
  Locking(mu, 0, [&] { return (real(mu), 0); });
}

void _ZN4absl7debian35Mutex10ReaderLockEv(void* mu) {
  PAGODA_REAL(Void, _ZN4absl7debian35Mutex10ReaderLockEv);
  Locking(mu, __tsan_mutex_read_lock, [&] { return (real(mu), 0); });
}

bool _ZN4absl7debian35Mutex7TryLockEv(void* mu) {
  PAGODA_REAL(Bool, _ZN4absl7debian35Mutex7TryLockEv);
  __tsan_mutex_pre_lock(mu, __tsan_mutex_try_lock);
  const bool locked = real(mu);
  __tsan_mutex_post_lock(mu, __tsan_mutex_try_lock | (locked ? 0 : __tsan_mutex_try_lock_failed),
                         0);
  return locked;
}

bool _ZN4absl7debian35Mutex13ReaderTryLockEv(void* mu) {
  PAGODA_REAL(Bool, _ZN4absl7debian35Mutex13ReaderTryLockEv);
  const unsigned mode = __tsan_mutex_read_lock | __tsan_mutex_try_lock;
  __tsan_mutex_pre_lock(mu, mode);
  const bool locked = real(mu);
  __tsan_mutex_post_lock(mu, mode | (locked ? 0 : __tsan_mutex_try_lock_failed), 0);
  return locked;
}

void _ZN4absl7debian35Mutex6UnlockEv(void* mu) {
  PAGODA_REAL(Void, _ZN4absl7debian35Mutex6UnlockEv);
  Unlocking(mu, 0, real);
}

void _ZN4absl7debian35Mutex12ReaderUnlockEv(void* mu) {
  PAGODA_REAL(Void, _ZN4absl7debian35Mutex12ReaderUnlockEv);
  Unlocking(mu, __tsan_mutex_read_lock, real);
}

void _ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE(void* mu, Cond cond) {
  PAGODA_REAL(CondVoid, _ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE);
  Locking(mu, 0, [&] { return (real(mu, cond), 0); });
}

void _ZN4absl7debian35Mutex14ReaderLockWhenERKNS0_9ConditionE(void* mu, Cond cond) {
  PAGODA_REAL(CondVoid, _ZN4absl7debian35Mutex14ReaderLockWhenERKNS0_9ConditionE);
  Locking(mu, __tsan_mutex_read_lock, [&] { return (real(mu, cond), 0); });
}

bool _ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE(void* mu, Cond cond,
                                                                              absl::Time deadline) {
  PAGODA_REAL(CondTime, _ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE);
  return Locking(mu, 0, [&] { return real(mu, cond, deadline); });
}

bool _ZN4absl7debian35Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE(
    void* mu, Cond cond, absl::Time deadline) {
  PAGODA_REAL(CondTime,
              _ZN4absl7debian35Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE);
  return Locking(mu, __tsan_mutex_read_lock, [&] { return real(mu, cond, deadline); });
}

void _ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE(void* mu, Cond cond) {
  PAGODA_REAL(CondVoid, _ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE);
  WaitReleasing(mu, [&] { return (real(mu, cond), 0); });
}

bool _ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE(void* mu, Cond cond,
                                                                           absl::Time deadline) {
  PAGODA_REAL(CondTime, _ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE);
  return WaitReleasing(mu, [&] { return real(mu, cond, deadline); });
}

// ~Mutex: complete-object (D1) and base-object (D2) destructors share one body in the library.
void _ZN4absl7debian35MutexD1Ev(void* mu) {
  PAGODA_REAL(Void, _ZN4absl7debian35MutexD1Ev);
  __tsan_mutex_destroy(mu, 0);
  real(mu);
}

void _ZN4absl7debian35MutexD2Ev(void* mu) {
  PAGODA_REAL(Void, _ZN4absl7debian35MutexD2Ev);
  __tsan_mutex_destroy(mu, 0);
  real(mu);
}

// --- absl::CondVar: Wait* releases the mutex while it sleeps and holds it again on return ---

void _ZN4absl7debian37CondVar4WaitEPNS0_5MutexE(void* cv, void* mu) {
  using Fn = void (*)(void*, void*);
  PAGODA_REAL(Fn, _ZN4absl7debian37CondVar4WaitEPNS0_5MutexE);
  WaitReleasing(mu, [&] { return (real(cv, mu), 0); });
}

bool _ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE(void* cv, void* mu,
                                                                       absl::Time deadline) {
  using Fn = bool (*)(void*, void*, absl::Time);
  PAGODA_REAL(Fn, _ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE);
  return WaitReleasing(mu, [&] { return real(cv, mu, deadline); });
}

// --- absl::Notification: its mutex is covered above; the lock-free fast paths are not ---

void _ZN4absl7debian312Notification6NotifyEv(void* n) {
  PAGODA_REAL(Void, _ZN4absl7debian312Notification6NotifyEv);
  __tsan_release(NotifiedFlag(n));
  real(n);
}

void _ZNK4absl7debian312Notification19WaitForNotificationEv(const void* n) {
  using Fn = void (*)(const void*);
  PAGODA_REAL(Fn, _ZNK4absl7debian312Notification19WaitForNotificationEv);
  real(n);
  __tsan_acquire(NotifiedFlag(n));
}

bool _ZNK4absl7debian312Notification30WaitForNotificationWithTimeoutENS0_8DurationE(
    const void* n, absl::Duration timeout) {
  using Fn = bool (*)(const void*, absl::Duration);
  PAGODA_REAL(Fn, _ZNK4absl7debian312Notification30WaitForNotificationWithTimeoutENS0_8DurationE);
  const bool notified = real(n, timeout);
  if (notified) __tsan_acquire(NotifiedFlag(n));
  return notified;
}

bool _ZNK4absl7debian312Notification31WaitForNotificationWithDeadlineENS0_4TimeE(
    const void* n, absl::Time deadline) {
  using Fn = bool (*)(const void*, absl::Time);
  PAGODA_REAL(Fn, _ZNK4absl7debian312Notification31WaitForNotificationWithDeadlineENS0_4TimeE);
  const bool notified = real(n, deadline);
  if (notified) __tsan_acquire(NotifiedFlag(n));
  return notified;
}

}  // extern "C"
