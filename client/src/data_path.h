// How page bytes move between a client and pagodad. Control calls (Exists, Stats, ...) always go
// over gRPC; the bytes of Put and Get go through one of these. Implementations: LocalPath (the
// shared-memory arena, for clients on pagodad's machine) and RemotePath (gRPC streaming). A UCX
// path (transport issue) plugs in here.
//
// Thread safety: implementations are safe for concurrent use without external synchronization.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "pagoda/client/client.h"

namespace pagoda::client_internal {

class DataPath {
 public:
  virtual ~DataPath() = default;
  virtual const char* name() const = 0;
  // Same contracts as Client::Put / Client::Get.
  virtual std::vector<absl::Status> Put(absl::Span<const PutPage> pages) = 0;
  virtual std::vector<GetResult> Get(absl::Span<const GetPage> pages) = 0;
};

}  // namespace pagoda::client_internal
