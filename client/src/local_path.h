// The local zero-copy data path: maps its tenant's host pages (the memfd pagodad sends over the
// unix socket; it holds no other tenant's bytes) and copies page bytes directly between caller
// buffers and page slots; only small Reserve /
// Commit / Acquire / Release records cross the socket (pagoda/service/local_protocol.h).
//
// Thread safety: safe for concurrent use; each batch borrows one of a pool of connections.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "data_path.h"

namespace pagoda::client_internal {

class LocalPath final : public DataPath {
 public:
  // Connects to `socket`, says Hello as `tenant` with `token`, maps the arena. At most
  // `max_connections` sockets are opened (lazily).
  static absl::StatusOr<std::unique_ptr<LocalPath>> Open(
      const std::string& socket, const std::string& tenant, const std::string& token,
      int max_connections, bool prefault = true, uint64_t expect_instance = 0,
      absl::Duration timeout = absl::InfiniteDuration());
  ~LocalPath() override;

  const char* name() const override { return "local"; }
  std::vector<absl::Status> Put(absl::Span<const PutPage> pages) override;
  std::vector<GetResult> Get(absl::Span<const GetPage> pages) override;

 private:
  struct Conn;
  LocalPath(std::string socket, std::string tenant, std::string token, int max_connections,
            bool prefault, uint64_t expect_instance, absl::Duration timeout);
  // Opens a connection and says Hello; fills arena_/arena_bytes_ on the first one.
  absl::StatusOr<std::unique_ptr<Conn>> Dial();
  absl::StatusOr<std::unique_ptr<Conn>> Borrow();
  void Return(std::unique_ptr<Conn> conn, bool healthy);
  // One request/reply exchange; `codes` gets each entry's code, `first_error` the server's text.
  absl::Status Exchange(Conn* c, uint16_t op, uint32_t count, const void* req, size_t req_bytes,
                        void* reply, size_t reply_bytes, std::string* first_error);
  std::vector<GetResult> GetOnce(absl::Span<const GetPage> pages);
  // Prefaults the segment holding `offset` the first time (when prefault_ is on).
  void Prefault(uint64_t offset);

  const std::string socket_;
  const std::string tenant_;
  const std::string token_;
  const int max_connections_;
  const bool prefault_;
  const uint64_t expect_instance_;  // 0 = do not check
  const absl::Duration timeout_;    // per socket read / write; a stuck server fails the call
  uint8_t* arena_ = nullptr;
  uint64_t arena_bytes_ = 0;
  uint64_t segment_bytes_ = 0;                       // 0: the server did not say
  std::unique_ptr<std::atomic<bool>[]> prefaulted_;  // one flag per segment

  absl::Mutex mu_;
  std::vector<std::unique_ptr<Conn>> idle_ ABSL_GUARDED_BY(mu_);
  int open_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace pagoda::client_internal
