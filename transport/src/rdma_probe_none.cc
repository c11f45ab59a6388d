// Built when libibverbs is absent: no RDMA devices can be used.
#include "transport/src/rdma_probe.h"

namespace pagoda::internal {

int CountRdmaDevices() { return 0; }

}  // namespace pagoda::internal
