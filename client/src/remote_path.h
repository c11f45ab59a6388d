// The remote data path: page bytes over pagoda.v1 Put / Get gRPC streams, in chunks.
//
// Thread safety: safe for concurrent use (gRPC stubs are).
#pragma once

#include <functional>
#include <memory>

#include "data_path.h"
#include "pagoda.grpc.pb.h"

namespace pagoda::client_internal {

class RemotePath final : public DataPath {
 public:
  // `prepare` sets deadline and credentials metadata on each call's context.
  RemotePath(v1::Pagoda::Stub* stub, std::string tenant, uint32_t chunk_bytes,
             std::function<void(grpc::ClientContext*)> prepare);

  const char* name() const override { return "remote"; }
  std::vector<absl::Status> Put(absl::Span<const PutPage> pages) override;
  std::vector<GetResult> Get(absl::Span<const GetPage> pages) override;

 private:
  std::vector<GetResult> GetOnce(absl::Span<const GetPage> pages);
  // One unary call; *fits is false when the server says the pages exceed one message.
  std::vector<GetResult> GetInline(absl::Span<const GetPage> pages, bool* fits);

  v1::Pagoda::Stub* const stub_;
  const std::string tenant_;
  const uint32_t chunk_bytes_;
  const std::function<void(grpc::ClientContext*)> prepare_;
};

// grpc::Status -> absl::Status (the one place the client converts them).
absl::Status FromGrpc(const grpc::Status& s);
absl::Status FromPageStatus(const v1::PageStatus& s);

}  // namespace pagoda::client_internal
