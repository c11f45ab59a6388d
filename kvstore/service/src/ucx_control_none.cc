// UcxControl where pagodad is built without the transport component: no UCX data path.
#include "pagoda/transport/transport.h"  // header only: complete types for the members
#include "ucx_control.h"

namespace pagoda::service {
namespace {
absl::Status NoUcx() {
  return absl::FailedPreconditionError("pagodad was built without the transport component (UCX)");
}
}  // namespace

UcxControl::UcxControl(Store* store, ServiceMetrics* metrics, UcxControlOptions options)
    : store_(store), metrics_(metrics), options_(options) {
  // Unused without UCX; named here so clang's -Wunused-private-field holds in such builds.
  (void)store_;
  (void)metrics_;
}
UcxControl::~UcxControl() = default;

absl::StatusOr<std::unique_ptr<UcxControl>> UcxControl::Create(Store*, ServiceMetrics*,
                                                               UcxControlOptions) {
  return NoUcx();
}
absl::Status UcxControl::Hello(const std::string&, v1::UcxHelloResponse*) { return NoUcx(); }
absl::Status UcxControl::Acquire(const v1::UcxAcquireRequest&, v1::UcxAcquireResponse*) {
  return NoUcx();
}
absl::Status UcxControl::Release(const v1::UcxReleaseRequest&, v1::BatchResponse*) {
  return NoUcx();
}
absl::Status UcxControl::Reserve(const v1::PutBegin&, v1::UcxReserveResponse*) { return NoUcx(); }
absl::Status UcxControl::Commit(const v1::UcxCommitRequest&, v1::PutResponse*) { return NoUcx(); }
size_t UcxControl::open_leases() const { return 0; }
size_t UcxControl::open_reservations() const { return 0; }
void UcxControl::Sweep(bool) {}
void UcxControl::SweepNow() {}
UcxControl::TenantView::~TenantView() = default;

}  // namespace pagoda::service
