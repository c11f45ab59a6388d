// Issue 14: one Put (and one Get) ten times larger than the host tier, on every data path of a
// real pagodad: the request streams through the host tier to SSD and reads back byte-exact. A
// malformed request of that size still stores nothing.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "pagodad_process.h"

namespace pagoda::testing {
namespace {

constexpr uint64_t kHostBytes = 4ULL << 20;

std::string Config() {
  return R"(
server: {grpc_host: 127.0.0.1, grpc_port: 0, http_host: 127.0.0.1, http_port: 0}
store:
  host_bytes: 4MiB
  ssd_bytes: 512MiB
  layouts: [{dtype: fp16, kv_heads: 8, head_dim: 128, page_tokens: 16}]
)";
}

struct PathCase {
  const char* name;
  DataPathKind kind;
  bool ucx;
};

class LargeWriteTest : public ::testing::TestWithParam<PathCase> {};

TEST_P(LargeWriteTest, OneRequestTenTimesTheHostTierRoundTrips) {
  PagodadProcess::Options o;
  o.config_yaml = Config();
  if (GetParam().ucx) o.extra_args = {"--ucx", "true"};  // off by default (see README)
  absl::StatusOr<std::unique_ptr<PagodadProcess>> s = PagodadProcess::Start(o);
  ASSERT_TRUE(s.ok()) << s.status();
  ClientOptions co = (*s)->ClientOpts("big", GetParam().kind);
  co.ucx = GetParam().ucx;
  auto c = Client::Connect(co);
  ASSERT_TRUE(c.ok()) << c.status();
  if (GetParam().ucx && (*c)->data_path() != "ucx") {
    GTEST_SKIP() << "UCX is not usable here (path " << (*c)->data_path() << ")";
  }
  const PageLayout l{};
  const uint64_t pages = 10 * kHostBytes / l.PageBytes();  // 640 pages of 64 KiB: 40 MiB
  std::vector<std::vector<uint8_t>> data;
  std::vector<PutPage> puts;
  for (uint64_t i = 0; i < pages; ++i) data.push_back(PageBytes(PageKey{77, i}, l.PageBytes()));
  for (uint64_t i = 0; i < pages; ++i) puts.push_back({PageKey{77, i}, l.Id(), data[i]});

  // Malformed at its last page (wrong size): refused as a whole, nothing stored.
  std::vector<uint8_t> short_page(l.PageBytes() - 1);
  std::vector<PutPage> bad = puts;
  bad.back().bytes = short_page;
  std::vector<absl::Status> st = (*c)->Put(bad);
  ASSERT_EQ(st.size(), pages);
  EXPECT_FALSE(st.back().ok());
  absl::StatusOr<std::vector<bool>> ex = (*c)->Exists({PageKey{77, 0}, PageKey{77, pages / 2}});
  ASSERT_TRUE(ex.ok());
  EXPECT_FALSE((*ex)[0]) << "a malformed request stored a page";
  EXPECT_FALSE((*ex)[1]) << "a malformed request stored a page";

  st = (*c)->Put(puts);
  ASSERT_EQ(st.size(), pages);
  for (uint64_t i = 0; i < pages; ++i) ASSERT_TRUE(st[i].ok()) << "page " << i << ": " << st[i];

  std::vector<std::vector<uint8_t>> out(pages, std::vector<uint8_t>(l.PageBytes()));
  std::vector<GetPage> gets;
  for (uint64_t i = 0; i < pages; ++i) gets.push_back({PageKey{77, i}, absl::MakeSpan(out[i])});
  std::vector<GetResult> got = (*c)->Get(gets);
  ASSERT_EQ(got.size(), pages);
  for (uint64_t i = 0; i < pages; ++i) {
    ASSERT_TRUE(got[i].status.ok()) << "page " << i << ": " << got[i].status;
    ASSERT_EQ(out[i], data[i]) << "page " << i;
  }
  absl::StatusOr<ServiceStats> stats = (*c)->Stats();
  ASSERT_TRUE(stats.ok());
  for (const TierUsage& t : stats->tiers) {
    if (t.name == "host") {
      EXPECT_LE(t.used_bytes, kHostBytes);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Paths, LargeWriteTest,
                         ::testing::Values(PathCase{"Local", DataPathKind::kLocal, false},
                                           PathCase{"Grpc", DataPathKind::kRemote, false},
                                           PathCase{"Ucx", DataPathKind::kRemote, true}),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace pagoda::testing
