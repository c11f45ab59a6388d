// The Pagoda client: batched, two-phase, checksum-verified page puts and gets against pagodad,
// through the shared-memory arena when the server is on this machine (zero-copy: the client
// copies straight between its buffers and the server's page slots) and otherwise over the network:
// the stream data path (one gRPC control call per batch, page bytes on a TCP connection to the
// server's data port) where the server offers it, else gRPC streaming.
//
//   pagoda::ClientOptions o;  o.tenant = "team-a";
//   auto client = pagoda::Client::Connect(o);                  // StatusOr
//   std::vector<pagoda::PageKey> keys = pagoda::ChainPageKeys(tokens, 16, {"llama3", 0, salt});
//   (*client)->Put({{keys[0], layout.Id(), bytes}});             // one status per page
//   (*client)->Get({{keys[0], out_span}});                      // bytes verified by checksum
//
// Every page carries its layout id; its size must be that layout's PageBytes(). Bytes read are
// always checked against the page's XXH3-64 checksum before a call returns OK; a mismatch is
// retried once and then reported as DataLoss (the caller's buffer content is then unspecified).
//
// Thread safety: a Client is safe for concurrent use without external synchronization. The
// spans passed in must stay valid (and unmodified / untouched by others) until the call, or the
// future / callback of an *Async call, completes.
#pragma once

#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "pagoda/client/options.h"
#include "pagoda/kvstore/page.h"
#include "pagoda/kvstore/prefix.h"

namespace pagoda {

struct PutPage {
  PageKey key;
  LayoutId layout = 0;
  absl::Span<const uint8_t> bytes;  // exactly PageLayout::FromId(layout)->PageBytes() bytes
};

struct GetPage {
  PageKey key;
  absl::Span<uint8_t> out;  // at least the page's size
};

struct GetResult {
  absl::Status status;  // NotFound for a page the store does not hold (for this tenant)
  LayoutId layout = 0;
  uint64_t size = 0;  // bytes written to `out`
};

struct TierUsage {
  std::string name;
  uint64_t capacity_bytes = 0;
  uint64_t used_bytes = 0;
  uint64_t pages = 0;
  uint64_t hits = 0;
  uint64_t promotions = 0;
  uint64_t evictions = 0;
};

struct ServiceStats {
  std::vector<TierUsage> tiers;
  uint64_t pages = 0;
  uint64_t misses = 0;
  uint64_t tenant_quota_bytes = 0;
  uint64_t bytes_in = 0;   // through gRPC
  uint64_t bytes_out = 0;  // through gRPC
  double uptime_s = 0;
  uint64_t active_leases = 0;
  uint64_t pinned_bytes = 0;
  uint64_t checksum_failures = 0;
  uint64_t local_clients = 0;
};

struct ServiceHealth {
  bool serving = false;
  std::string version;
  std::string local_socket;
  uint64_t instance_id = 0;
  uint64_t arena_bytes = 0;
  int http_port = 0;
  int data_port = 0;                 // TCP port of the stream data path on the gRPC host; 0 = none
  std::vector<std::string> layouts;  // "id:description"
};

class Client {
 public:
  // Connects (checks the server with Health, and sets up the local path when chosen).
  // Unavailable when pagodad cannot be reached; Unauthenticated / PermissionDenied when the
  // local path refuses the token; FailedPrecondition for kLocal with no reachable socket.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const ClientOptions& options);
  virtual ~Client() = default;

  // "local", "stream" (remote, bytes on the data port), "remote" (bytes over gRPC) or "ucx".
  virtual std::string data_path() const = 0;

  // ---- Batched page I/O (one status / result per page, in order) ------------------------------
  // Writes pages two-phase: reserve, copy, commit each whose bytes arrived intact. A key that
  // is already stored answers AlreadyExists (pages are immutable); a malformed batch (unknown
  // layout, wrong size, duplicate key) fails every page with InvalidArgument / Aborted and
  // stores nothing. A batch of any size is accepted: it goes to the server in windows of at most
  // a quarter of its host tier, each committed before the next is reserved, so a request larger
  // than the host tier streams through it to SSD (a failure then fails only its window's pages).
  virtual std::vector<absl::Status> Put(absl::Span<const PutPage> pages) = 0;
  // Reads pages into the callers' buffers, verifying each checksum.
  virtual std::vector<GetResult> Get(absl::Span<const GetPage> pages) = 0;
  // Whether each key is stored.
  virtual absl::StatusOr<std::vector<bool>> Exists(absl::Span<const PageKey> keys) = 0;
  // How many leading keys of a chain (page 0 first) are stored: the reusable prefix.
  virtual absl::StatusOr<size_t> LongestPrefix(absl::Span<const PageKey> keys) = 0;
  virtual std::vector<absl::Status> Remove(absl::Span<const PageKey> keys) = 0;
  virtual std::vector<absl::Status> Pin(absl::Span<const PageKey> keys) = 0;
  virtual std::vector<absl::Status> Unpin(absl::Span<const PageKey> keys) = 0;
  // Moves stored pages of `keys` up into the host tier (or "gpu"); returns how many moved.
  virtual absl::StatusOr<size_t> Prefetch(absl::Span<const PageKey> keys,
                                          const std::string& tier = "host") = 0;
  virtual absl::StatusOr<ServiceStats> Stats() = 0;
  virtual absl::StatusOr<ServiceHealth> Health() = 0;

  // ---- Asynchronous forms (run on the client's async threads) ---------------------------------
  std::future<std::vector<absl::Status>> PutAsync(std::vector<PutPage> pages);
  std::future<std::vector<GetResult>> GetAsync(std::vector<GetPage> pages);
  std::future<absl::StatusOr<std::vector<bool>>> ExistsAsync(std::vector<PageKey> keys);
  std::future<absl::StatusOr<size_t>> LongestPrefixAsync(std::vector<PageKey> keys);
  // Callback forms: `done` runs on an async thread.
  void PutAsync(std::vector<PutPage> pages, std::function<void(std::vector<absl::Status>)> done);
  void GetAsync(std::vector<GetPage> pages, std::function<void(std::vector<GetResult>)> done);

 protected:
  // Runs `task` on an async thread.
  virtual void Submit(std::function<void()> task) = 0;
};

}  // namespace pagoda
