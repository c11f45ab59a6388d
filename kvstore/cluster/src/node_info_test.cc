#include "pagoda/cluster/node_info.h"

#include <gtest/gtest.h>

namespace pagoda::cluster {
namespace {

NodeInfo Sample() {
  NodeInfo n;
  n.id = "node-1.rack_a";
  n.address = "10.0.0.7";
  n.grpc_port = 50051;
  n.http_port = 9464;
  n.data_port = 13337;
  n.tiers = {"host", "ssd"};
  n.capacity_bytes = {{"host", 1ull << 34}, {"ssd", 1ull << 41}};
  n.weight = 2.5;
  n.version = "0.1.0";
  return n;
}

TEST(NodeInfo, JsonRoundTrip) {
  const NodeInfo n = Sample();
  auto back = NodeInfoFromJson(NodeInfoToJson(n));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, n);
  EXPECT_EQ(back->grpc_target(), "10.0.0.7:50051");
}

TEST(NodeInfo, OptionalFieldsDefault) {
  auto n = NodeInfoFromJson(R"({"id":"a","address":"h","grpc_port":1})");
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(n->http_port, 0);
  EXPECT_DOUBLE_EQ(n->weight, 1.0);
  EXPECT_TRUE(n->tiers.empty());
}

TEST(NodeInfo, RejectsMalformed) {
  const char* bad[] = {
      "",
      "not json",
      "[1,2]",
      R"({"address":"h","grpc_port":1})",                               // no id
      R"({"id":"a","grpc_port":1})",                                    // no address
      R"({"id":"a","address":"h"})",                                    // no port
      R"({"id":"a","address":"h","grpc_port":0})",                      // port 0
      R"({"id":"a","address":"h","grpc_port":70000})",                  // port range
      R"({"id":"a","address":"h","grpc_port":"1"})",                    // port type
      R"({"id":"a b","address":"h","grpc_port":1})",                    // id chars
      R"({"id":"a/b","address":"h","grpc_port":1})",                    // id chars
      R"({"id":7,"address":"h","grpc_port":1})",                        // id type
      R"({"id":"a","address":"h","grpc_port":1,"weight":0})",           // weight
      R"({"id":"a","address":"h","grpc_port":1,"weight":-1})",          // weight
      R"({"id":"a","address":"h","grpc_port":1,"tiers":"host"})",       // tiers type
      R"({"id":"a","address":"h","grpc_port":1,"tiers":[1]})",          // tier type
      R"({"id":"a","address":"h","grpc_port":1,"capacity_bytes":[]})",  // capacity type
      R"({"id":"a","address":"h","grpc_port":1,"capacity_bytes":{"host":-5}})",
  };
  for (const char* json : bad) {
    EXPECT_TRUE(absl::IsInvalidArgument(NodeInfoFromJson(json).status())) << json;
  }
}

TEST(NodeInfo, ValidateNamesTheField) {
  NodeInfo n = Sample();
  n.grpc_port = -1;
  absl::Status st = ValidateNodeInfo(n);
  EXPECT_TRUE(absl::IsInvalidArgument(st));
  EXPECT_NE(st.message().find("grpc_port"), std::string::npos) << st;
  n = Sample();
  n.id = std::string(129, 'a');
  EXPECT_TRUE(absl::IsInvalidArgument(ValidateNodeInfo(n)));
}

}  // namespace
}  // namespace pagoda::cluster
