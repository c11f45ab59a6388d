// UcxPath where the client library is built without the transport component: never offered, so
// remote clients move page bytes over gRPC.
#include "pagoda/transport/transport.h"  // header only: complete types for the members
#include "ucx_path.h"

namespace pagoda::client_internal {

struct UcxPath::Connection {};

UcxPath::UcxPath(v1::Pagoda::Stub* stub, std::string tenant,
                 std::function<void(grpc::ClientContext*)> prepare)
    : stub_(stub), tenant_(std::move(tenant)), prepare_(std::move(prepare)) {}
UcxPath::~UcxPath() = default;

absl::StatusOr<std::unique_ptr<UcxPath>> UcxPath::Open(v1::Pagoda::Stub*, std::string,
                                                       std::function<void(grpc::ClientContext*)>,
                                                       absl::Duration) {
  return absl::FailedPreconditionError("the client was built without UCX");
}
std::vector<absl::Status> UcxPath::Put(absl::Span<const PutPage> pages) {
  return std::vector<absl::Status>(pages.size(), absl::FailedPreconditionError("no UCX"));
}
std::vector<GetResult> UcxPath::Get(absl::Span<const GetPage> pages) {
  std::vector<GetResult> out(pages.size());
  for (GetResult& r : out) r.status = absl::FailedPreconditionError("no UCX");
  return out;
}

}  // namespace pagoda::client_internal
