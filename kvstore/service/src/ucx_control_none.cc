// UcxControl where pagodad is built without the transport component: no UCX data path.
#include "pagoda/transport/transport.h"  // header only: complete types for the members
#include "ucx_control.h"

namespace pagoda::service {
namespace {
absl::Status NoUcx() {
  return absl::FailedPreconditionError("pagodad was built without the transport component (UCX)");
}
}  // namespace

UcxControl::UcxControl(Store* store, ServiceMetrics* metrics, CommittedIndex* committed,
                       UcxControlOptions options)
    : store_(store), metrics_(metrics), committed_(committed), options_(options) {
  // Unused without UCX; named here so clang's -Wunused-private-field holds in such builds.
  (void)store_;
  (void)metrics_;
  (void)committed_;
}
UcxControl::~UcxControl() = default;

absl::StatusOr<std::unique_ptr<UcxControl>> UcxControl::Create(Store*, ServiceMetrics*,
                                                               CommittedIndex*, UcxControlOptions) {
  return NoUcx();
}
absl::Status UcxControl::Hello(v1::UcxHelloResponse*) const { return NoUcx(); }
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
void UcxControl::Sweep() {}

}  // namespace pagoda::service
