#pragma once

namespace pagoda::internal {

// Number of RDMA (ibverbs) devices on this machine; 0 when none or when verbs are unavailable.
int CountRdmaDevices();

}  // namespace pagoda::internal
