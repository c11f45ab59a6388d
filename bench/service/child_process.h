// Starting and stopping the benchmark's server processes (pagodad, redis-server).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace pagoda::bench {

// fork + exec `argv` with stdout/stderr appended to `log`.
absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv, const std::string& log);
// SIGTERM, then wait (SIGKILL after 20 s). Returns the exit code.
int StopChild(pid_t pid);
// A free TCP port on 127.0.0.1 (bind to 0 and read it back).
int FreePort();

}  // namespace pagoda::bench
