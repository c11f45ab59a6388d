// The gRPC adapter of pagodad: decodes pagoda.v1 requests, checks tenant and token, calls the
// engine and encodes the answer. Generated proto types stop here; the engine never sees them.
//
// Thread safety: gRPC calls the handlers concurrently; the service holds no per-call state and
// the engine, metrics and authorizer are thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "auth.h"
#include "metrics.h"
#include "pagoda.grpc.pb.h"
#include "pagoda/kvstore/store.h"
#include "pagoda/service/config.h"

namespace pagoda::service {

class UcxControl;
class CallWatchdog;
class DataStreamServer;

// Largest number of pages in one batched request.
inline constexpr int kMaxBatchPages = 4096;

struct ServiceInfo {
  std::string local_socket;
  uint64_t instance_id = 0;
  int http_port = -1;
};

class GrpcService final : public pagoda::v1::Pagoda::Service {
 public:
  GrpcService(Store* store, const Authorizer* auth, ServiceMetrics* metrics,
              const ServiceConfig& config, ServiceInfo info);

  // While false, Health answers serving=false and every other call is rejected with
  // Unavailable (set at the start of a graceful stop).
  void SetServing(bool serving) { serving_ = serving; }
  // Calls being served now (for draining).
  int in_flight() const { return in_flight_.load(); }
  void SetHttpPort(int port) { info_.http_port = port; }
  void SetLocalClientsSource(std::function<int()> f) { local_clients_ = std::move(f); }
  // The UCX data path (null = none: the Ucx* calls answer FailedPrecondition). Set before serving.
  void SetUcx(UcxControl* ucx) { ucx_ = ucx; }
  // Cancels Put streams that hold reservations and stall (null = none). Set before serving.
  void SetWatchdog(CallWatchdog* watchdog) { watchdog_ = watchdog; }
  // The stream data path (null = none: the Stream* calls answer FailedPrecondition and Health
  // reports no data port). Set before serving.
  void SetDataStream(DataStreamServer* stream) { stream_ = stream; }

  grpc::Status Put(grpc::ServerContext* ctx, grpc::ServerReader<v1::PutRequest>* reader,
                   v1::PutResponse* response) override;
  grpc::Status Get(grpc::ServerContext* ctx, const v1::GetRequest* request,
                   grpc::ServerWriter<v1::GetResponse>* writer) override;
  grpc::Status PutInline(grpc::ServerContext* ctx, const v1::PutBegin* request,
                         v1::PutResponse* response) override;
  grpc::Status GetInline(grpc::ServerContext* ctx, const v1::GetRequest* request,
                         v1::GetInlineResponse* response) override;
  grpc::Status Exists(grpc::ServerContext* ctx, const v1::KeysRequest* request,
                      v1::ExistsResponse* response) override;
  grpc::Status LongestPrefix(grpc::ServerContext* ctx, const v1::KeysRequest* request,
                             v1::LongestPrefixResponse* response) override;
  grpc::Status Remove(grpc::ServerContext* ctx, const v1::KeysRequest* request,
                      v1::BatchResponse* response) override;
  grpc::Status Pin(grpc::ServerContext* ctx, const v1::KeysRequest* request,
                   v1::BatchResponse* response) override;
  grpc::Status Unpin(grpc::ServerContext* ctx, const v1::KeysRequest* request,
                     v1::BatchResponse* response) override;
  grpc::Status Prefetch(grpc::ServerContext* ctx, const v1::PrefetchRequest* request,
                        v1::PrefetchResponse* response) override;
  grpc::Status Stats(grpc::ServerContext* ctx, const v1::StatsRequest* request,
                     v1::StatsResponse* response) override;
  grpc::Status Health(grpc::ServerContext* ctx, const v1::HealthRequest* request,
                      v1::HealthResponse* response) override;
  grpc::Status UcxHello(grpc::ServerContext* ctx, const v1::UcxHelloRequest* request,
                        v1::UcxHelloResponse* response) override;
  grpc::Status UcxAcquire(grpc::ServerContext* ctx, const v1::UcxAcquireRequest* request,
                          v1::UcxAcquireResponse* response) override;
  grpc::Status UcxRelease(grpc::ServerContext* ctx, const v1::UcxReleaseRequest* request,
                          v1::BatchResponse* response) override;
  grpc::Status UcxReserve(grpc::ServerContext* ctx, const v1::PutBegin* request,
                          v1::UcxReserveResponse* response) override;
  grpc::Status UcxCommit(grpc::ServerContext* ctx, const v1::UcxCommitRequest* request,
                         v1::PutResponse* response) override;
  grpc::Status StreamGet(grpc::ServerContext* ctx, const v1::StreamGetRequest* request,
                         v1::BatchResponse* response) override;
  grpc::Status StreamPut(grpc::ServerContext* ctx, const v1::StreamPutRequest* request,
                         v1::PutResponse* response) override;

 private:
  absl::Status Authorize(grpc::ServerContext* ctx, const std::string& tenant) const;
  absl::Status PutImpl(grpc::ServerContext* ctx, grpc::ServerReader<v1::PutRequest>* reader,
                       v1::PutResponse* response);
  // A page of a batch write: its reservation and how many of its bytes arrived.
  struct PutSlot {
    absl::Status status;  // of the reservation (then of the page)
    uint64_t id = 0;
    uint64_t offset = 0;  // in the host arena
    uint64_t size = 0;    // the page's size (also when its reservation failed)
    uint64_t received = 0;
    // Set by a receiver that checksummed the page as it arrived (while its bytes were in cache).
    bool checksummed = false;
    uint64_t checksum = 0;
    // Set by a receiver whose expected checksum came with the bytes (not in `begin`).
    bool has_expected = false;
    uint64_t expected = 0;
  };
  // The two-phase batch write shared by Put, PutInline and StreamPut: validate, reserve,
  // `receive` the bytes into the slots (an error aborts every reservation), verify, commit.
  absl::Status PutBatch(grpc::ServerContext* ctx, const v1::PutBegin& begin,
                        const std::function<absl::Status(std::vector<PutSlot>&)>& receive,
                        v1::PutResponse* response, const char* path = "grpc");
  // Bytes inline in `begin`, then the chunks of `reader` (null: none).
  absl::Status ReceiveChunks(grpc::ServerContext* ctx, const v1::PutBegin& begin,
                             grpc::ServerReader<v1::PutRequest>* reader,
                             std::vector<PutSlot>& pages);
  absl::Status StreamGetImpl(grpc::ServerContext* ctx, const v1::StreamGetRequest& request,
                             v1::BatchResponse* response);
  absl::Status StreamPutImpl(grpc::ServerContext* ctx, const v1::StreamPutRequest& request,
                             v1::PutResponse* response);
  absl::Status GetImpl(grpc::ServerContext* ctx, const v1::GetRequest* request,
                       grpc::ServerWriter<v1::GetResponse>* writer);
  // Per-key operation returning one status per key (Remove, Pin, Unpin).
  template <typename Fn>
  absl::Status PerKey(grpc::ServerContext* ctx, const v1::KeysRequest* request,
                      v1::BatchResponse* response, Fn fn);

  Store* const store_;
  const Authorizer* const auth_;
  ServiceMetrics* const metrics_;
  const ServiceConfig config_;
  ServiceInfo info_;
  std::function<int()> local_clients_;
  UcxControl* ucx_ = nullptr;
  CallWatchdog* watchdog_ = nullptr;
  DataStreamServer* stream_ = nullptr;
  std::atomic<bool> serving_{true};
  std::atomic<int> in_flight_{0};
  std::atomic<uint64_t> bytes_in_{0};
  std::atomic<uint64_t> bytes_out_{0};
  const std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
};

}  // namespace pagoda::service
