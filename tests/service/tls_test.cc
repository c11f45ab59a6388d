// Optional TLS on the gRPC port: server certificate, and mTLS (client certificates required).
// Certificates are made for the test with the openssl CLI (skipped where it is missing).
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>

#include "pagodad_process.h"

namespace pagoda::testing {
namespace {

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (system("command -v openssl >/dev/null 2>&1") != 0) GTEST_SKIP() << "no openssl CLI";
    char tmpl[] = "/tmp/pgdtls-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    const std::string d = dir_;
    { std::ofstream(d + "/ext.cnf") << "subjectAltName=DNS:localhost,IP:127.0.0.1\n"; }
    const std::string script =
        "cd " + d +
        " && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 "
        "-subj /CN=pagoda-test-ca"
        " && openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr "
        "-subj /CN=localhost"
        " && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
        "-out server.pem -days 1 -extfile ext.cnf"
        " && openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr "
        "-subj /CN=pagoda-client"
        " && openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
        "-out client.pem -days 1"
        " >/dev/null 2>&1";
    ASSERT_EQ(system(script.c_str()), 0) << "certificate generation failed";
  }
  void TearDown() override {
    if (server_ && server_->pid() > 0) {
      absl::StatusOr<int> rc = server_->Stop(SIGTERM);
      ASSERT_TRUE(rc.ok());
      EXPECT_EQ(*rc, 0) << server_->Log();
    }
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }
  void Start(bool mtls) {
    PagodadProcess::Options o;
    o.extra_args = {"--tls-cert", dir_ + "/server.pem", "--tls-key", dir_ + "/server.key"};
    if (mtls) {
      o.extra_args.push_back("--tls-client-ca");
      o.extra_args.push_back(dir_ + "/ca.pem");
    }
    absl::StatusOr<std::unique_ptr<PagodadProcess>> p = PagodadProcess::Start(o);
    ASSERT_TRUE(p.ok()) << p.status();
    server_ = std::move(*p);
  }
  ClientOptions Opts(bool tls, bool cert) const {
    ClientOptions o = server_->ClientOpts("tls", DataPathKind::kRemote);
    o.timeout = absl::Seconds(5);
    if (tls) {
      o.tls_ca = dir_ + "/ca.pem";
      o.tls_server_name = "localhost";
    }
    if (cert) {
      o.tls_cert = dir_ + "/client.pem";
      o.tls_key = dir_ + "/client.key";
    }
    return o;
  }
  static void RoundTrip(Client& c) {
    const PageLayout l = SmallLayout();
    PageKey k{0x7175, 1};
    std::vector<uint8_t> data = PageBytes(k, l.PageBytes());
    ASSERT_TRUE(c.Put({{k, l.Id(), data}})[0].ok());
    std::vector<uint8_t> out(data.size());
    ASSERT_TRUE(c.Get({{k, absl::MakeSpan(out)}})[0].status.ok());
    EXPECT_EQ(out, data);
  }
  std::string dir_;
  std::unique_ptr<PagodadProcess> server_;
};

TEST_F(TlsTest, ServerCertificate) {
  Start(/*mtls=*/false);
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(Opts(true, false));
  ASSERT_TRUE(c.ok()) << c.status();
  RoundTrip(**c);
  // A plaintext client cannot talk to the TLS port.
  absl::StatusOr<std::unique_ptr<Client>> plain = Client::Connect(Opts(false, false));
  EXPECT_FALSE(plain.ok());
}

TEST_F(TlsTest, MutualTlsRequiresAClientCertificate) {
  Start(/*mtls=*/true);
  absl::StatusOr<std::unique_ptr<Client>> without = Client::Connect(Opts(true, false));
  EXPECT_FALSE(without.ok()) << "a client without a certificate got in";
  absl::StatusOr<std::unique_ptr<Client>> with = Client::Connect(Opts(true, true));
  ASSERT_TRUE(with.ok()) << with.status();
  RoundTrip(**with);
}

}  // namespace
}  // namespace pagoda::testing
