// Test helpers: a child process the test owns (killed with the test, even on a crash) and free
// loopback ports. Used by the cluster unit tests and the fault tests in tests/cluster.
#ifndef PAGODA_KVSTORE_CLUSTER_TESTING_SUBPROCESS_H_
#define PAGODA_KVSTORE_CLUSTER_TESTING_SUBPROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace pagoda::cluster::testing {

// A port on 127.0.0.1 that was free a moment ago (bind to port 0, read it back, close).
absl::StatusOr<int> PickFreePort();

// A fresh directory under $TEST_TMPDIR (or /tmp), removed by RemoveTree.
absl::StatusOr<std::string> MakeTempDir(const std::string& prefix);
void RemoveTree(const std::string& path);

// Thread safety: not thread-safe; one test thread drives it.
class Subprocess {
 public:
  // Starts argv[0] (looked up on PATH) with stdout and stderr appended to `log_path`. The child
  // gets SIGKILL when the test process dies.
  static absl::StatusOr<std::unique_ptr<Subprocess>> Start(const std::vector<std::string>& argv,
                                                           const std::string& log_path);
  ~Subprocess();  // kills the child if it still runs

  pid_t pid() const { return pid_; }
  bool Running();        // false once the child exited (reaps it)
  void Signal(int sig);  // e.g. SIGSTOP / SIGCONT; no-op after exit
  void Kill();           // SIGKILL and reap
  // SIGTERM, then SIGKILL after `grace`; returns the exit code (128+signal if killed).
  int Terminate(absl::Duration grace = absl::Seconds(5));
  // Waits up to `timeout` for the child to exit on its own; its exit code, or DeadlineExceeded.
  absl::StatusOr<int> Wait(absl::Duration timeout);

 private:
  explicit Subprocess(pid_t pid) : pid_(pid) {}
  pid_t pid_;
  bool exited_ = false;
  int exit_code_ = 0;
};

}  // namespace pagoda::cluster::testing

#endif  // PAGODA_KVSTORE_CLUSTER_TESTING_SUBPROCESS_H_
