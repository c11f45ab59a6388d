// What a pagodad node publishes about itself in etcd (as JSON under its lease), and what clients
// route by.
#ifndef PAGODA_CLUSTER_NODE_INFO_H_
#define PAGODA_CLUSTER_NODE_INFO_H_

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace pagoda::cluster {

struct NodeInfo {
  // Stable node name (Kubernetes: the node name). [A-Za-z0-9._-], 1..128 characters.
  std::string id;
  // Host or IP clients reach this node at.
  std::string address;
  int grpc_port = 0;  // pagodad's gRPC API (required, 1..65535)
  int http_port = 0;  // /metrics and /healthz; 0 when not served
  int data_port = 0;  // bulk data plane (UCX); 0 when not served
  // Tiers the node has, e.g. {"host", "ssd"}, and their capacity in bytes.
  std::vector<std::string> tiers;
  std::map<std::string, uint64_t> capacity_bytes;
  // Relative placement weight (> 0): a node of weight 2 gets twice the pages of weight 1.
  double weight = 1.0;
  std::string version;  // pagodad build version, informative

  std::string grpc_target() const;  // "address:grpc_port"
  bool operator==(const NodeInfo&) const = default;
};

// Checks the fields above; InvalidArgument naming the first bad one.
absl::Status ValidateNodeInfo(const NodeInfo& node);
// JSON encoding stored in etcd. ToJson requires a valid node.
std::string NodeInfoToJson(const NodeInfo& node);
// Parses and validates; InvalidArgument on malformed JSON, wrong types or invalid fields.
absl::StatusOr<NodeInfo> NodeInfoFromJson(std::string_view json);

}  // namespace pagoda::cluster

#endif  // PAGODA_CLUSTER_NODE_INFO_H_
