// The UCX implementation of Transport (private; reached through Transport::Create).
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "pagoda/transport/transport.h"

namespace pagoda::internal {

// `tls` is the resolved UCX_TLS value (never empty).
absl::StatusOr<std::unique_ptr<Transport>> CreateUcxTransport(const TransportOptions& options,
                                                              const std::string& tls);

// Whether this UCX build can register CUDA memory.
bool UcxSupportsCudaMemory();

}  // namespace pagoda::internal
