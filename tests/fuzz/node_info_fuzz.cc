// libFuzzer target: etcd node records (NodeInfoFromJson), which every client and pagodad parses
// from whatever etcd holds under the cluster prefix. A record that parses must validate and
// survive a round trip through NodeInfoToJson unchanged.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "pagoda/cluster/node_info.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view json(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<pagoda::cluster::NodeInfo> node = pagoda::cluster::NodeInfoFromJson(json);
  if (!node.ok()) return 0;
  if (!pagoda::cluster::ValidateNodeInfo(*node).ok()) __builtin_trap();
  absl::StatusOr<pagoda::cluster::NodeInfo> again =
      pagoda::cluster::NodeInfoFromJson(pagoda::cluster::NodeInfoToJson(*node));
  if (!again.ok() || !(*again == *node)) __builtin_trap();
  return 0;
}
