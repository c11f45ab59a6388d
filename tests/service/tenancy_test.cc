// Tenants are isolated (a page of tenant A is invisible to B, even under the same key), tokens
// bind tenants, and per-tenant quotas hold.
#include <gtest/gtest.h>

#include "pagodad_process.h"

namespace pagoda::testing {
namespace {

class TenancyTest : public ::testing::TestWithParam<DataPathKind> {
 protected:
  void Start(const std::string& extra_yaml) {
    PagodadProcess::Options o;
    o.config_yaml = TestConfigYaml() + extra_yaml;
    absl::StatusOr<std::unique_ptr<PagodadProcess>> p = PagodadProcess::Start(o);
    ASSERT_TRUE(p.ok()) << p.status();
    server_ = std::move(*p);
  }
  void TearDown() override {
    if (server_ && server_->pid() > 0) {
      absl::StatusOr<int> rc = server_->Stop(SIGTERM);
      ASSERT_TRUE(rc.ok()) << rc.status();
      EXPECT_EQ(*rc, 0) << server_->Log();
    }
  }
  absl::StatusOr<std::unique_ptr<Client>> Connect(const std::string& tenant,
                                                  const std::string& token) {
    ClientOptions o = server_->ClientOpts(tenant, GetParam());
    o.token = token;
    return Client::Connect(o);
  }
  std::unique_ptr<PagodadProcess> server_;
};

TEST_P(TenancyTest, PagesOfOneTenantAreInvisibleToAnother) {
  Start("");
  auto a = Connect("alice", "");
  auto b = Connect("bob", "");
  ASSERT_TRUE(a.ok() && b.ok());
  const PageLayout l = SmallLayout();
  const PageKey k{0xAAAA, 1};
  std::vector<uint8_t> bytes_a = PageBytes(k, l.PageBytes(), 1);
  std::vector<uint8_t> bytes_b = PageBytes(k, l.PageBytes(), 2);
  ASSERT_TRUE((*a)->Put({{k, l.Id(), bytes_a}})[0].ok());

  EXPECT_FALSE((*(*b)->Exists({k}))[0]);
  EXPECT_EQ(*(*b)->LongestPrefix({k}), 0u);
  std::vector<uint8_t> out(l.PageBytes());
  EXPECT_TRUE(absl::IsNotFound((*b)->Get({{k, absl::MakeSpan(out)}})[0].status));
  EXPECT_TRUE(absl::IsNotFound((*b)->Remove({k})[0]));
  EXPECT_TRUE(absl::IsNotFound((*b)->Pin({k})[0]));

  // Same key, other tenant: a separate page.
  ASSERT_TRUE((*b)->Put({{k, l.Id(), bytes_b}})[0].ok());
  ASSERT_TRUE((*a)->Get({{k, absl::MakeSpan(out)}})[0].status.ok());
  EXPECT_EQ(out, bytes_a);
  ASSERT_TRUE((*b)->Get({{k, absl::MakeSpan(out)}})[0].status.ok());
  EXPECT_EQ(out, bytes_b);
  // B removing its page leaves A's.
  ASSERT_TRUE((*b)->Remove({k})[0].ok());
  EXPECT_TRUE((*(*a)->Exists({k}))[0]);
}

TEST_P(TenancyTest, TokensBindTenants) {
  Start(R"(
tenants:
  alice: {token: alice-secret}
  bob: {token: bob-secret}
security: {allow_unknown_tenants: false}
)");
  auto good = Connect("alice", "alice-secret");
  ASSERT_TRUE(good.ok()) << good.status();
  const PageLayout l = SmallLayout();
  std::vector<uint8_t> bytes = PageBytes(PageKey{5, 5}, l.PageBytes());
  auto check_refused = [&](const std::string& tenant, const std::string& token,
                           absl::StatusCode want) {
    auto c = Connect(tenant, token);
    if (!c.ok()) {  // the local path refuses at Hello
      EXPECT_EQ(c.status().code(), want) << tenant << " " << c.status();
      return;
    }
    absl::Status s = (*c)->Put({{PageKey{5, 5}, l.Id(), bytes}})[0];
    EXPECT_EQ(s.code(), want) << tenant << ": " << s;
  };
  check_refused("alice", "bob-secret", absl::StatusCode::kUnauthenticated);
  check_refused("bob", "alice-secret", absl::StatusCode::kUnauthenticated);
  check_refused("carol", "alice-secret", absl::StatusCode::kPermissionDenied);
  check_refused("", "alice-secret", absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE((*(*good)->Exists({PageKey{5, 5}}))[0]);
  EXPECT_TRUE((*good)->Put({{PageKey{5, 5}, l.Id(), bytes}})[0].ok());
}

TEST_P(TenancyTest, HostQuotaIsEnforcedPerTenant) {
  Start(R"(
tenants:
  small: {quota_bytes: 1MiB}
)");
  auto small = Connect("small", "");
  auto other = Connect("other", "");
  ASSERT_TRUE(small.ok() && other.ok());
  const PageLayout l{};  // 64 KiB: 16 pages fill the 1 MiB quota
  std::vector<std::vector<uint8_t>> data;
  std::vector<PutPage> puts;
  for (uint64_t i = 0; i < 24; ++i) data.push_back(PageBytes(PageKey{6, i}, l.PageBytes()));
  for (uint64_t i = 0; i < 24; ++i) puts.push_back({PageKey{6, i}, l.Id(), data[i]});
  std::vector<absl::Status> st = (*small)->Put(puts);
  int ok = 0, exhausted = 0;
  for (size_t i = 0; i < st.size(); ++i) {
    if (st[i].ok()) ++ok;
    if (absl::IsResourceExhausted(st[i])) {
      ++exhausted;
      EXPECT_FALSE((*(*small)->Exists({puts[i].key}))[0]) << "a refused page became visible";
    }
  }
  EXPECT_EQ(ok, 16);
  EXPECT_EQ(exhausted, 8);
  absl::StatusOr<ServiceStats> s = (*small)->Stats();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->tenant_quota_bytes, 1u << 20);
  // The quota is the tenant's own: another tenant still writes the same keys.
  for (const absl::Status& x : (*other)->Put(puts)) EXPECT_TRUE(x.ok()) << x;
  // At its quota, a later write evicts the tenant's own least-recent page (down to SSD) instead
  // of being refused; the evicted page still reads back right.
  EXPECT_TRUE((*small)->Put({puts[20]})[0].ok());
  EXPECT_TRUE((*small)->Put({puts[21]})[0].ok());
  std::vector<uint8_t> out(l.PageBytes());
  for (uint64_t i : {0, 1, 20, 21}) {
    GetResult r = (*small)->Get({{PageKey{6, i}, absl::MakeSpan(out)}})[0];
    ASSERT_TRUE(r.status.ok()) << i << ": " << r.status;
    EXPECT_EQ(out, data[i]) << i;
  }
  absl::StatusOr<ServiceStats> after = (*small)->Stats();
  ASSERT_TRUE(after.ok());
  for (const TierUsage& t : after->tiers) {
    if (t.name == "host") {
      // The small tenant's quota (16 pages) plus the other tenant's 24 pages.
      EXPECT_LE(t.used_bytes, (16u + 24u) * l.PageBytes());
    }
  }
  // With every own page pinned, the quota refuses and nothing changes.
  std::vector<PageKey> own;
  for (uint64_t i = 0; i < 24; ++i) own.push_back(PageKey{6, i});
  (*small)->Pin(own);
  PutPage extra{PageKey{6, 99}, l.Id(), data[0]};
  EXPECT_TRUE(absl::IsResourceExhausted((*small)->Put({extra})[0]));
  EXPECT_FALSE((*(*small)->Exists({extra.key}))[0]);
}

INSTANTIATE_TEST_SUITE_P(Paths, TenancyTest,
                         ::testing::Values(DataPathKind::kLocal, DataPathKind::kRemote),
                         [](const auto& info) {
                           return info.param == DataPathKind::kLocal ? std::string("Local")
                                                                     : std::string("Remote");
                         });

}  // namespace
}  // namespace pagoda::testing
