// The trace replay's pieces: the trace parser, the LRU reference, the block byte pattern, and a
// replay of a few dozen synthetic requests against a real pagodad whose hit rate must equal the
// simulated one exactly (one request in flight, a cache that never evicts).
#include "replay.h"

#include <gtest/gtest.h>

#include "lru_reference.h"
#include "mooncake_trace.h"
#include "pagodad_process.h"

namespace pagoda::trace {
namespace {

const PageLayout kBlock{DType::kFp16, 1, 8, 512};  // 16 KiB blocks

std::string NodeYaml(uint64_t host_bytes) {
  return "server: {grpc_host: 127.0.0.1, grpc_port: 0, http_host: 127.0.0.1, http_port: 0}\n"
         "store:\n  host_bytes: " +
         std::to_string(host_bytes) +
         "\n  ssd_bytes: 0\n  layouts:\n    - {dtype: fp16, kv_heads: 1, head_dim: 8, "
         "page_tokens: 512}\n";
}

TEST(TraceParse, ReadsMooncakeLines) {
  absl::StatusOr<std::vector<TraceRequest>> t = ParseTrace(
      "{\"timestamp\": 0, \"input_length\": 1030, \"output_length\": 5, \"hash_ids\": [0, 1, 2]}\n"
      "\n"
      "{\"timestamp\": 27, \"input_length\": 600, \"output_length\": 1, \"hash_ids\": [0, 3]}\n");
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->size(), 2u);
  EXPECT_EQ((*t)[1].timestamp_ms, 27);
  EXPECT_EQ((*t)[0].hash_ids, (std::vector<uint64_t>{0, 1, 2}));
  EXPECT_EQ(BlockTokens((*t)[0], 0, 512), 512u);
  EXPECT_EQ(BlockTokens((*t)[0], 2, 512), 6u);  // the partial last block
  EXPECT_EQ(BlockTokens((*t)[1], 1, 512), 88u);
}

TEST(TraceParse, RejectsMalformedLinesByNumber) {
  for (const char* bad :
       {"{\"timestamp\": 0, \"input_length\": 1}",
        "{\"timestamp\": -1, \"input_length\": 1, \"hash_ids\": []}",
        "{\"timestamp\": 0, \"input_length\": 1, \"hash_ids\": [-4]}",
        "{\"timestamp\": 0, \"input_length\": 1, \"hash_ids\": [1.5]}", "[1, 2]", "{not json"}) {
    absl::StatusOr<std::vector<TraceRequest>> t = ParseTrace(
        std::string("{\"timestamp\": 0, \"input_length\": 1, \"hash_ids\": []}\n") + bad);
    ASSERT_FALSE(t.ok()) << bad;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(t.status().message().find("line 2"), std::string::npos) << t.status();
  }
  EXPECT_EQ(LoadTrace("/nonexistent/trace.jsonl").status().code(), absl::StatusCode::kNotFound);
}

TEST(TraceKeys, ChainedOverThePrefix) {
  TraceRequest a{0, 1536, 0, {7, 8, 9}}, b{0, 1536, 0, {7, 8, 10}}, c{0, 1536, 0, {6, 8, 9}};
  std::vector<PageKey> ka = ChainKeys(a), kb = ChainKeys(b), kc = ChainKeys(c);
  EXPECT_EQ(ka[1], kb[1]);
  EXPECT_NE(ka[2], kb[2]);
  EXPECT_NE(ka[1], kc[1]);  // same id, different prefix
  EXPECT_NE(ka[2], kc[2]);
}

TEST(PrefixLru, HitsLeadingRunAndEvictsLeastRecent) {
  auto keys = [](std::vector<uint64_t> ids) { return ChainKeys(TraceRequest{0, 0, 0, ids}); };
  PrefixLru lru(3);
  EXPECT_EQ(lru.Access(keys({1, 2})), 0u);
  EXPECT_EQ(lru.Access(keys({1, 2, 3})), 2u);
  EXPECT_EQ(lru.size(), 3u);
  EXPECT_EQ(lru.Access(keys({4})), 0u);     // evicts [1]
  EXPECT_EQ(lru.Access(keys({1, 2})), 0u);  // its block 1 is gone: no prefix
  PrefixLru unbounded(0);
  unbounded.Access(keys({1, 2, 3}));
  unbounded.Access(keys({4, 5}));
  EXPECT_EQ(unbounded.Access(keys({1, 2, 3, 6})), 3u);
}

TEST(BlockPattern, DetectsWrongKeyAndFlippedByte) {
  std::vector<uint8_t> page(kBlock.PageBytes() + 3);
  const PageKey k{1, 2};
  FillBlock(k, absl::MakeSpan(page));
  EXPECT_TRUE(CheckBlock(k, page));
  EXPECT_FALSE(CheckBlock(PageKey{1, 3}, page));
  page[page.size() / 2] ^= 0x10;
  EXPECT_FALSE(CheckBlock(k, page));
  page[page.size() / 2] ^= 0x10;
  page.back() ^= 1;
  EXPECT_FALSE(CheckBlock(k, page));
}

struct Replayed {
  std::vector<TraceRequest> reqs = SyntheticTrace(48, 4, 11);
  std::vector<std::vector<PageKey>> keys;
  Replayed() {
    for (const auto& r : reqs) keys.push_back(ChainKeys(r));
  }
  ReplayOptions Opts() const {
    ReplayOptions o;
    o.layout = kBlock.Id();
    o.page_bytes = kBlock.PageBytes();
    o.compress = 0;
    o.inflight = 1;
    o.batch_pages = 3;
    o.prefill_us_per_token = 0.01;
    return o;
  }
};

TEST(Replay, SingleNodeMatchesTheUnboundedReferenceExactly) {
  Replayed t;
  testing::PagodadProcess::Options po;
  po.config_yaml = NodeYaml(64ULL << 20);
  auto node = testing::PagodadProcess::Start(po);
  ASSERT_TRUE(node.ok()) << node.status();
  auto client = Client::Connect((*node)->ClientOpts("trace", DataPathKind::kAuto));
  ASSERT_TRUE(client.ok()) << client.status();
  SingleStoreTarget target(client->get());
  ReplayReport r = Replay(t.reqs, t.keys, target, t.Opts());
  const SimResult sim = Simulate(t.reqs, t.keys, 0, 512);
  ASSERT_GT(sim.hit_blocks, 10u);  // the synthetic trace shares prefixes
  EXPECT_EQ(r.requests, t.reqs.size());
  EXPECT_EQ(r.hit_blocks, sim.hit_blocks);
  EXPECT_EQ(r.hit_tokens, sim.hit_tokens);
  EXPECT_EQ(r.tokens, sim.tokens);
  EXPECT_EQ(r.wrong_pages, 0u);
  EXPECT_EQ(r.lost_hits, 0u);
  EXPECT_EQ(r.lookup_errors + r.get_errors + r.put_errors, 0u);
  EXPECT_EQ(r.verified_bytes, sim.hit_blocks * kBlock.PageBytes());
  EXPECT_EQ(r.put_pages, sim.blocks - sim.hit_blocks);
  EXPECT_EQ(r.tier_hits_host, sim.hit_blocks);
  EXPECT_EQ(r.lookup.us.size(), t.reqs.size());
  EXPECT_NEAR(r.prefill_saved_s, sim.hit_tokens * 0.01e-6, 1e-9);
}

TEST(Replay, PerNodeRoutingNeverBeatsOnePoolAndServesRightBytes) {
  Replayed t;
  std::vector<std::unique_ptr<testing::PagodadProcess>> nodes;
  std::vector<std::unique_ptr<Client>> clients;
  std::vector<Client*> raw;
  for (int i = 0; i < 2; ++i) {
    testing::PagodadProcess::Options po;
    po.config_yaml = NodeYaml(64ULL << 20);
    auto n = testing::PagodadProcess::Start(po);
    ASSERT_TRUE(n.ok()) << n.status();
    auto c = Client::Connect((*n)->ClientOpts("trace", DataPathKind::kAuto));
    ASSERT_TRUE(c.ok()) << c.status();
    nodes.push_back(std::move(*n));
    clients.push_back(std::move(*c));
    raw.push_back(clients.back().get());
  }
  LongestPrefixRouter target(raw);
  ReplayOptions o = t.Opts();
  o.inflight = 3;
  ReplayReport r = Replay(t.reqs, t.keys, target, o);
  const SimResult sim = Simulate(t.reqs, t.keys, 0, 512);
  EXPECT_EQ(r.requests, t.reqs.size());
  EXPECT_LE(r.hit_tokens, sim.hit_tokens);
  EXPECT_GT(r.hit_blocks, 0u);
  EXPECT_EQ(r.wrong_pages, 0u);
  EXPECT_EQ(r.lookup_errors + r.get_errors + r.put_errors, 0u);
  // Both nodes were used (ties go to the less-loaded one).
  for (Client* c : raw) {
    absl::StatusOr<ServiceStats> s = c->Stats();
    ASSERT_TRUE(s.ok());
    EXPECT_GT(s->pages, 0u);
  }
}

}  // namespace
}  // namespace pagoda::trace
