#include "pagoda/cluster/node_info.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace pagoda::cluster {

std::string NodeInfo::grpc_target() const { return absl::StrCat(address, ":", grpc_port); }

absl::Status ValidateNodeInfo(const NodeInfo& node) {
  if (node.id.empty() || node.id.size() > 128) {
    return absl::InvalidArgumentError("node info: id must be 1..128 characters");
  }
  for (char c : node.id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat("node info: id '", node.id, "' may only hold [A-Za-z0-9._-]"));
    }
  }
  if (node.address.empty()) return absl::InvalidArgumentError("node info: empty address");
  if (node.grpc_port < 1 || node.grpc_port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("node info: grpc_port out of range: ", node.grpc_port));
  }
  for (int port : {node.http_port, node.data_port}) {
    if (port < 0 || port > 65535) {
      return absl::InvalidArgumentError(absl::StrCat("node info: port out of range: ", port));
    }
  }
  if (!(node.weight > 0) || !std::isfinite(node.weight)) {
    return absl::InvalidArgumentError("node info: weight must be a positive finite number");
  }
  return absl::OkStatus();
}

std::string NodeInfoToJson(const NodeInfo& node) {
  nlohmann::json j;
  j["id"] = node.id;
  j["address"] = node.address;
  j["grpc_port"] = node.grpc_port;
  j["http_port"] = node.http_port;
  j["data_port"] = node.data_port;
  j["tiers"] = node.tiers;
  j["capacity_bytes"] = node.capacity_bytes;
  j["weight"] = node.weight;
  j["version"] = node.version;
  return j.dump();
}

absl::StatusOr<NodeInfo> NodeInfoFromJson(std::string_view json) {
  nlohmann::json j = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("node info: not a JSON object");
  }
  NodeInfo node;
  auto str = [&](const char* name, std::string* out, bool required) -> absl::Status {
    auto it = j.find(name);
    if (it == j.end()) {
      return required ? absl::InvalidArgumentError(absl::StrCat("node info: missing ", name))
                      : absl::OkStatus();
    }
    if (!it->is_string()) {
      return absl::InvalidArgumentError(absl::StrCat("node info: ", name, " is not a string"));
    }
    *out = it->get<std::string>();
    return absl::OkStatus();
  };
  auto port = [&](const char* name, int* out, bool required) -> absl::Status {
    auto it = j.find(name);
    if (it == j.end()) {
      return required ? absl::InvalidArgumentError(absl::StrCat("node info: missing ", name))
                      : absl::OkStatus();
    }
    if (!it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() > 65535) {
      return absl::InvalidArgumentError(absl::StrCat("node info: ", name, " is not a port"));
    }
    *out = static_cast<int>(it->get<int64_t>());
    return absl::OkStatus();
  };
  for (absl::Status st :
       {str("id", &node.id, true), str("address", &node.address, true),
        str("version", &node.version, false), port("grpc_port", &node.grpc_port, true),
        port("http_port", &node.http_port, false), port("data_port", &node.data_port, false)}) {
    if (!st.ok()) return st;
  }
  if (auto it = j.find("tiers"); it != j.end()) {
    if (!it->is_array()) return absl::InvalidArgumentError("node info: tiers is not an array");
    for (const nlohmann::json& t : *it) {
      if (!t.is_string()) return absl::InvalidArgumentError("node info: a tier is not a string");
      node.tiers.push_back(t.get<std::string>());
    }
  }
  if (auto it = j.find("capacity_bytes"); it != j.end()) {
    if (!it->is_object()) {
      return absl::InvalidArgumentError("node info: capacity_bytes is not an object");
    }
    for (auto& [tier, bytes] : it->items()) {
      if (!bytes.is_number_unsigned() &&
          !(bytes.is_number_integer() && bytes.get<int64_t>() >= 0)) {
        return absl::InvalidArgumentError(
            absl::StrCat("node info: capacity of tier '", tier, "' is not a byte count"));
      }
      node.capacity_bytes[tier] = bytes.get<uint64_t>();
    }
  }
  if (auto it = j.find("weight"); it != j.end()) {
    if (!it->is_number()) return absl::InvalidArgumentError("node info: weight is not a number");
    node.weight = it->get<double>();
  }
  absl::Status st = ValidateNodeInfo(node);
  if (!st.ok()) return st;
  return node;
}

}  // namespace pagoda::cluster
