// Counts RDMA devices through libibverbs. Built when libibverbs is found (rdma_probe_none.cc
// otherwise); on machines without an RDMA NIC the list is simply empty.
#include <infiniband/verbs.h>

#include "transport/src/rdma_probe.h"

namespace pagoda::internal {

int CountRdmaDevices() {
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list == nullptr) return 0;  // no driver, no devices: not an error
  ibv_free_device_list(list);
  return n;
}

}  // namespace pagoda::internal
