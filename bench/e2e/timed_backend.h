// A WorkerBackend that forwards every call to another and adds up the wall time spent inside
// them, so a benchmark can split a worker step into the backend's share (device work, copies,
// syncs) and the worker's own host work (the rest).
#ifndef PAGODA_BENCH_E2E_TIMED_BACKEND_H_
#define PAGODA_BENCH_E2E_TIMED_BACKEND_H_

#include <memory>
#include <string>

#include "pagoda/client/worker_backend.h"

namespace pagoda::bench {

class TimedBackend;

// Wraps `inner`; *timer (owned by the returned backend, valid while it lives) reads the total.
std::unique_ptr<WorkerBackend> MakeTimedBackend(std::unique_ptr<WorkerBackend> inner,
                                                TimedBackend** timer);

// Seconds spent in backend calls since the last Reset().
double BackendSeconds(const TimedBackend& timer);
void ResetBackendSeconds(TimedBackend& timer);
// The time per backend method since the last ResetBackendBreakdown, largest first:
// "ScorePages 1.234, Attend 0.567" in ms after dividing by `divisor` (e.g. the steps measured).
std::string BackendBreakdown(const TimedBackend& timer, double divisor);
void ResetBackendBreakdown(TimedBackend& timer);

}  // namespace pagoda::bench

#endif  // PAGODA_BENCH_E2E_TIMED_BACKEND_H_
