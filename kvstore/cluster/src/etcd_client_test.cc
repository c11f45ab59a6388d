#include "pagoda/cluster/etcd_client.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "absl/strings/str_cat.h"
#include "kvstore/cluster/testing/etcd_process.h"
#include "kvstore/cluster/testing/subprocess.h"

namespace pagoda::cluster {
namespace {

using testing::EtcdProcess;

class EtcdClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto etcd = EtcdProcess::Start();
    ASSERT_TRUE(etcd.ok()) << etcd.status();
    etcd_ = std::move(*etcd);
    EtcdOptions options;
    options.endpoints = {etcd_->endpoint()};
    auto client = EtcdClient::Create(options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = std::move(*client);
  }

  std::unique_ptr<EtcdProcess> etcd_;
  std::unique_ptr<EtcdClient> client_;
};

TEST(EtcdClientCreate, RejectsBadOptions) {
  EXPECT_TRUE(absl::IsInvalidArgument(EtcdClient::Create({}).status()));
  for (const char* bad : {"", "localhost", "localhost:", ":2379", "host:12x", "https://h:"}) {
    EtcdOptions o;
    o.endpoints = {bad};
    EXPECT_TRUE(absl::IsInvalidArgument(EtcdClient::Create(o).status())) << bad;
  }
  EtcdOptions o;
  o.endpoints = {"http://127.0.0.1:2379"};
  EXPECT_TRUE(EtcdClient::Create(o).ok());
  o.rpc_timeout = absl::ZeroDuration();
  EXPECT_TRUE(absl::IsInvalidArgument(EtcdClient::Create(o).status()));
}

TEST(EtcdClientCreate, RejectsInconsistentTls) {
  EtcdOptions o;
  o.endpoints = {"https://127.0.0.1:2379"};
  EXPECT_TRUE(EtcdClient::Create(o).ok()) << "https with the system roots";
  o.tls_cert_file = "/nonexistent/client.pem";
  EXPECT_TRUE(absl::IsInvalidArgument(EtcdClient::Create(o).status())) << "cert without key";
  o.tls_key_file = "/nonexistent/client.key";
  EXPECT_TRUE(absl::IsNotFound(EtcdClient::Create(o).status()));
  // TLS files with only plaintext endpoints: refused, never silently plaintext.
  EtcdOptions plain;
  plain.endpoints = {"127.0.0.1:2379", "http://127.0.0.1:2380"};
  plain.tls_ca_file = "/etc/ssl/certs/ca-certificates.crt";
  EXPECT_TRUE(absl::IsInvalidArgument(EtcdClient::Create(plain).status()));
}

// A real etcd serving TLS only and requiring client certificates, with certificates made by the
// test.
class EtcdTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::string> dir = testing::MakeTempDir("pagoda-pki");
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = *dir;
    absl::StatusOr<testing::TestPki> pki = testing::MakeTestPki(dir_);
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_ = *pki;
    auto etcd = EtcdProcess::StartTls(pki_);
    ASSERT_TRUE(etcd.ok()) << etcd.status();
    etcd_ = std::move(*etcd);
  }
  void TearDown() override {
    etcd_.reset();
    if (!dir_.empty()) testing::RemoveTree(dir_);
  }

  EtcdOptions Options() const {
    EtcdOptions o;
    o.endpoints = {etcd_->endpoint()};
    o.tls_ca_file = pki_.ca_file;
    o.tls_cert_file = pki_.client_cert_file;
    o.tls_key_file = pki_.client_key_file;
    o.rpc_timeout = absl::Seconds(2);
    return o;
  }

  std::string dir_;
  testing::TestPki pki_;
  std::unique_ptr<EtcdProcess> etcd_;
};

TEST_F(EtcdTlsTest, RoundTripWithCaAndClientCertificate) {
  ASSERT_EQ(etcd_->endpoint().rfind("https://", 0), 0u);
  auto client = EtcdClient::Create(Options());
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE((*client)->Put("/tls/a", "secret").ok());
  auto got = (*client)->Get("/tls/a");
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->kvs.size(), 1u);
  EXPECT_EQ(got->kvs[0].value, "secret");
  auto lease = (*client)->GrantLease(5);
  ASSERT_TRUE(lease.ok()) << lease.status();
}

TEST_F(EtcdTlsTest, RefusesWhatCannotAuthenticate) {
  // No client certificate: etcd's --client-cert-auth rejects the handshake.
  EtcdOptions no_cert = Options();
  no_cert.tls_cert_file.clear();
  no_cert.tls_key_file.clear();
  // A CA that did not sign etcd's certificate: the client rejects the server.
  EtcdOptions wrong_ca = Options();
  wrong_ca.tls_ca_file = pki_.other_ca_file;
  // Plaintext to a TLS port.
  EtcdOptions plaintext;
  plaintext.endpoints = {absl::StrCat("127.0.0.1:", etcd_->client_port())};
  plaintext.rpc_timeout = absl::Seconds(2);
  for (const EtcdOptions& o : {no_cert, wrong_ca, plaintext}) {
    auto client = EtcdClient::Create(o);
    ASSERT_TRUE(client.ok()) << client.status();
    absl::StatusOr<int64_t> put = (*client)->Put("/tls/b", "x");
    EXPECT_FALSE(put.ok());
  }
  // Nothing was written by the refused clients.
  auto client = EtcdClient::Create(Options());
  ASSERT_TRUE(client.ok());
  auto got = (*client)->Get("/tls/b");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->kvs.empty());
}

TEST(PrefixRangeEnd, IncrementsLastByte) {
  EXPECT_EQ(PrefixRangeEnd("/a/"), "/a0");
  EXPECT_EQ(PrefixRangeEnd(std::string("a\xff", 2)), "b");
  EXPECT_EQ(PrefixRangeEnd(std::string("\xff\xff", 2)), std::string(1, '\0'));
}

TEST_F(EtcdClientTest, PutGetDeleteRoundTrip) {
  auto rev1 = client_->Put("/t/a", "1");
  ASSERT_TRUE(rev1.ok()) << rev1.status();
  auto rev2 = client_->Put("/t/b", std::string("bin\0ary", 7));
  ASSERT_TRUE(rev2.ok());
  EXPECT_GT(*rev2, *rev1);
  ASSERT_TRUE(client_->Put("/u/c", "other prefix").ok());

  auto a = client_->Get("/t/a");
  ASSERT_TRUE(a.ok());
  ASSERT_EQ(a->kvs.size(), 1u);
  EXPECT_EQ(a->kvs[0].value, "1");
  EXPECT_EQ(a->kvs[0].mod_revision, *rev1);
  EXPECT_GE(a->revision, *rev2);

  auto all = client_->GetPrefix("/t/");
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->kvs.size(), 2u);
  EXPECT_EQ(all->kvs[0].key, "/t/a");
  EXPECT_EQ(all->kvs[1].key, "/t/b");
  EXPECT_EQ(all->kvs[1].value, std::string("bin\0ary", 7));

  auto missing = client_->Get("/t/zzz");
  ASSERT_TRUE(missing.ok());
  EXPECT_TRUE(missing->kvs.empty());

  auto deleted = client_->DeletePrefix("/t/");
  ASSERT_TRUE(deleted.ok());
  EXPECT_EQ(*deleted, 2);
  EXPECT_TRUE(client_->GetPrefix("/t/")->kvs.empty());
  EXPECT_EQ(client_->GetPrefix("/u/")->kvs.size(), 1u);  // untouched
  EXPECT_EQ(*client_->Delete("/u/c"), 1);
  EXPECT_EQ(*client_->Delete("/u/c"), 0);
}

TEST_F(EtcdClientTest, BadInputIsRejectedAndChangesNothing) {
  ASSERT_TRUE(client_->Put("/keep", "v").ok());
  EXPECT_TRUE(absl::IsInvalidArgument(client_->Put("", "v").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(client_->Get("").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(client_->GetPrefix("").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(client_->DeletePrefix("").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(client_->GrantLease(0).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(client_->WatchPrefix("", 0).status()));
  EXPECT_EQ(client_->Get("/keep")->kvs.size(), 1u);
}

TEST_F(EtcdClientTest, PutIfAbsentOnlyCreates) {
  auto first = client_->PutIfAbsent("/once", "a");
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(*first);
  auto second = client_->PutIfAbsent("/once", "b");
  ASSERT_TRUE(second.ok());
  EXPECT_FALSE(*second);
  EXPECT_EQ(client_->Get("/once")->kvs[0].value, "a");
}

TEST_F(EtcdClientTest, LeaseExpiryDeletesKeys) {
  auto lease = client_->GrantLease(2);
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(lease->ttl_seconds, 2);
  ASSERT_TRUE(client_->Put("/leased", "x", lease->id).ok());
  EXPECT_EQ(client_->Get("/leased")->kvs[0].lease, lease->id);
  auto ttl = client_->KeepAliveOnce(lease->id);
  ASSERT_TRUE(ttl.ok()) << ttl.status();
  EXPECT_EQ(*ttl, 2);
  // Without keep-alives the lease expires (etcd checks expiry every 500 ms).
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline && !client_->Get("/leased")->kvs.empty()) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_TRUE(client_->Get("/leased")->kvs.empty());
  EXPECT_TRUE(absl::IsNotFound(client_->KeepAliveOnce(lease->id).status()));
}

TEST_F(EtcdClientTest, RevokeDeletesKeysAtOnce) {
  auto lease = client_->GrantLease(60);
  ASSERT_TRUE(lease.ok());
  ASSERT_TRUE(client_->Put("/r", "x", lease->id).ok());
  ASSERT_TRUE(client_->RevokeLease(lease->id).ok());
  EXPECT_TRUE(client_->Get("/r")->kvs.empty());
  EXPECT_TRUE(absl::IsNotFound(client_->RevokeLease(lease->id)));
  // A put on a revoked lease fails and writes nothing.
  EXPECT_FALSE(client_->Put("/r", "y", lease->id).ok());
  EXPECT_TRUE(client_->Get("/r")->kvs.empty());
}

TEST_F(EtcdClientTest, WatchSeesPutsAndDeletesInOrder) {
  auto start = client_->Put("/w/0", "before");
  ASSERT_TRUE(start.ok());
  auto watch = client_->WatchPrefix("/w/", *start + 1);
  ASSERT_TRUE(watch.ok()) << watch.status();
  ASSERT_TRUE(client_->Put("/w/1", "one").ok());
  ASSERT_TRUE(client_->Put("/other", "not watched").ok());
  ASSERT_TRUE(client_->Delete("/w/0").ok());
  std::vector<EtcdEvent> seen;
  while (seen.size() < 2) {
    auto batch = (*watch)->Next();
    ASSERT_TRUE(batch.ok()) << batch.status();
    seen.insert(seen.end(), batch->begin(), batch->end());
  }
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].type, EtcdEvent::Type::kPut);
  EXPECT_EQ(seen[0].kv.key, "/w/1");
  EXPECT_EQ(seen[0].kv.value, "one");
  EXPECT_EQ(seen[1].type, EtcdEvent::Type::kDelete);
  EXPECT_EQ(seen[1].kv.key, "/w/0");
}

TEST_F(EtcdClientTest, WatchCancelUnblocksNext) {
  auto watch = client_->WatchPrefix("/idle/", 0);
  ASSERT_TRUE(watch.ok());
  std::thread canceller([&] {
    absl::SleepFor(absl::Milliseconds(200));
    (*watch)->Cancel();
  });
  auto r = (*watch)->Next();
  canceller.join();
  EXPECT_TRUE(absl::IsCancelled(r.status())) << r.status();
}

// A watch from "now" (revision 0) sees a change made right after WatchPrefix returns: "now" is
// pinned to the store's revision before the watch is requested. It used to mean "when etcd
// creates the watch", so a Put that reached etcd first was never delivered (Next() waited
// forever: seen once in a full test run on a loaded machine). The race needs etcd to be slow to
// create the watch, so this catches a regression only sometimes; the watchdog turns a miss into a
// failure instead of a hang.
TEST_F(EtcdClientTest, AWatchFromNowSeesTheNextChange) {
  for (int i = 0; i < 30; ++i) {
    auto watch = client_->WatchPrefix("/now/", 0);
    ASSERT_TRUE(watch.ok()) << watch.status();
    ASSERT_TRUE(client_->Put(absl::StrCat("/now/", i), "v").ok());
    std::atomic<bool> done{false};
    std::thread watchdog([&] {  // a missed event must fail the test, not hang it
      for (int t = 0; t < 100 && !done.load(); ++t) absl::SleepFor(absl::Milliseconds(100));
      if (!done.load()) (*watch)->Cancel();
    });
    auto events = (*watch)->Next();
    done.store(true);
    watchdog.join();
    ASSERT_TRUE(events.ok()) << "iteration " << i << ": " << events.status();
    ASSERT_EQ(events->size(), 1u);
    EXPECT_EQ((*events)[0].kv.key, absl::StrCat("/now/", i));
  }
}

TEST_F(EtcdClientTest, WatchEndsWhenEtcdDiesAndClientRecoversAfterRestart) {
  auto watch = client_->WatchPrefix("/x/", 0);
  ASSERT_TRUE(watch.ok());
  ASSERT_TRUE(client_->Put("/x/kept", "v").ok());
  ASSERT_TRUE((*watch)->Next().ok());
  etcd_->Kill();
  auto r = (*watch)->Next();
  EXPECT_TRUE(absl::IsUnavailable(r.status())) << r.status();
  EXPECT_FALSE(client_->Put("/x/during", "v").ok());
  ASSERT_TRUE(etcd_->Restart().ok());
  // The same client reconnects within its reconnect backoff; the data survived the restart.
  absl::StatusOr<EtcdRangeResult> got = absl::UnavailableError("not yet");
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline && !(got = client_->Get("/x/kept")).ok()) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->kvs.size(), 1u);
  EXPECT_EQ(got->kvs[0].value, "v");
}

TEST_F(EtcdClientTest, FailsOverToASecondEndpoint) {
  auto dead_port = testing::PickFreePort();
  ASSERT_TRUE(dead_port.ok());
  EtcdOptions options;
  options.endpoints = {absl::StrCat("127.0.0.1:", *dead_port), etcd_->endpoint()};
  auto client = EtcdClient::Create(options);
  ASSERT_TRUE(client.ok());
  EXPECT_TRUE((*client)->Put("/fo", "v").ok());
  EXPECT_TRUE((*client)->Get("/fo").ok());
}

}  // namespace
}  // namespace pagoda::cluster
