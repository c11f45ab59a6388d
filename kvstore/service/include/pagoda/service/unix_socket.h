// Small helpers over unix stream sockets for the local zero-copy path: whole-buffer reads and
// writes (EINTR-safe), and passing one file descriptor with SCM_RIGHTS.
//
// Thread safety: the functions are stateless; one socket must not be read (or written) by two
// threads at once.
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace pagoda::local {

// Writes all of `data` (MSG_NOSIGNAL: a closed peer gives an error, never SIGPIPE).
absl::Status WriteAll(int fd, const void* data, size_t size);

// Writes `data` with `pass_fd` attached as SCM_RIGHTS ancillary data.
absl::Status WriteWithFd(int fd, const void* data, size_t size, int pass_fd);

// Reads exactly `size` bytes. A clean close before the first byte gives absl::CancelledError
// ("peer closed"); a close in the middle gives absl::DataLossError.
absl::Status ReadAll(int fd, void* data, size_t size);

// Reads exactly `size` bytes, collecting a descriptor passed with them (-1 when none came).
absl::StatusOr<int> ReadWithFd(int fd, void* data, size_t size);

// Creates, binds and listens on a unix stream socket at `path` (an existing socket file is
// replaced), whose file has mode 0660 (owner and group may connect) whatever the umask. The path
// must fit sockaddr_un (107 bytes).
absl::StatusOr<int> ListenUnix(const std::string& path, int backlog);

// Connects to the unix stream socket at `path`.
absl::StatusOr<int> ConnectUnix(const std::string& path);

}  // namespace pagoda::local
