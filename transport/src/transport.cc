// Run-time choice of the transport implementation.
#include "pagoda/transport/transport.h"

#include <ucp/api/ucp.h>

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "transport/src/rdma_probe.h"
#include "transport/src/ucx_transport.h"

namespace pagoda {

TransportCapabilities ProbeTransportCapabilities() {
  TransportCapabilities caps;
  caps.rdma_devices = internal::CountRdmaDevices();
  caps.ucx_cuda_memory = internal::UcxSupportsCudaMemory();
  unsigned major = 0, minor = 0, release = 0;
  ucp_get_version(&major, &minor, &release);
  caps.ucx_version = absl::StrCat(major, ".", minor, ".", release);
  return caps;
}

absl::StatusOr<std::unique_ptr<Transport>> Transport::Create(const TransportOptions& options) {
  if (options.op_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("TransportOptions.op_timeout must be positive");
  }
  std::string tls = options.ucx_tls;
  if (tls.empty()) {
    const char* env = std::getenv("UCX_TLS");
    if (env != nullptr && *env != '\0') {
      tls = env;
    } else {
      // Without an RDMA NIC, keep UCX from probing verbs at all: the clean fallback.
      tls = internal::CountRdmaDevices() > 0 ? "all" : "tcp,sm,self";
    }
  }
  switch (options.kind) {
    case TransportOptions::Kind::kAuto:
    case TransportOptions::Kind::kUcx:
      return internal::CreateUcxTransport(options, tls);
  }
  return absl::InvalidArgumentError("unknown TransportOptions.kind");
}

}  // namespace pagoda
