#include "kvstore/cluster/testing/etcd_process.h"

#include <signal.h>

#include <cstdlib>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "pagoda/cluster/etcd_client.h"

namespace pagoda::cluster::testing {

absl::StatusOr<TestPki> MakeTestPki(const std::string& dir) {
  // EC P-256 keys: fast to make; etcd (Go) and gRPC (BoringSSL/OpenSSL) both take them.
  const std::string script = absl::StrCat(R"(set -e
cd ")",
                                          dir, R"("
key() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "$@"; }
key -x509 -days 2 -subj /CN=pagoda-test-ca -keyout ca.key -out ca.pem
key -x509 -days 2 -subj /CN=pagoda-other-ca -keyout other-ca.key -out other-ca.pem
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth,clientAuth
' >srv.ext
printf 'extendedKeyUsage=clientAuth
' >cli.ext
key -subj /CN=127.0.0.1 -keyout server.key -out server.csr
key -subj /CN=pagoda-client -keyout client.key -out client.csr
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2   -extfile srv.ext -out server.pem
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2   -extfile cli.ext -out client.pem
)");
  const std::string cmd = absl::StrCat("bash -c '", absl::StrReplaceAll(script, {{"'", "'\\''"}}),
                                       "' >", dir, "/pki.log 2>&1");
  if (std::system(cmd.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("openssl failed; see ", dir, "/pki.log"));
  }
  TestPki pki;
  pki.ca_file = dir + "/ca.pem";
  pki.server_cert_file = dir + "/server.pem";
  pki.server_key_file = dir + "/server.key";
  pki.client_cert_file = dir + "/client.pem";
  pki.client_key_file = dir + "/client.key";
  pki.other_ca_file = dir + "/other-ca.pem";
  return pki;
}

absl::StatusOr<std::unique_ptr<EtcdProcess>> EtcdProcess::StartTls(const TestPki& pki) {
  std::unique_ptr<EtcdProcess> etcd(new EtcdProcess());
  etcd->tls_ = pki;
  return Prepare(std::move(etcd));
}

absl::StatusOr<std::unique_ptr<EtcdProcess>> EtcdProcess::Start(
    const std::string& extra_listen_ip) {
  std::unique_ptr<EtcdProcess> etcd(new EtcdProcess());
  etcd->extra_listen_ip_ = extra_listen_ip;
  return Prepare(std::move(etcd));
}

absl::StatusOr<std::unique_ptr<EtcdProcess>> EtcdProcess::Prepare(
    std::unique_ptr<EtcdProcess> etcd) {
  absl::StatusOr<std::string> dir = MakeTempDir("pagoda-etcd");
  if (!dir.ok()) return dir.status();
  etcd->work_dir_ = *dir;
  etcd->data_dir_ = absl::StrCat(*dir, "/data");
  absl::StatusOr<int> client = PickFreePort();
  absl::StatusOr<int> peer = PickFreePort();
  if (!client.ok()) return client.status();
  if (!peer.ok()) return peer.status();
  if (*client == *peer) return absl::InternalError("etcd: picked the same port twice");
  etcd->client_port_ = *client;
  etcd->peer_port_ = *peer;
  absl::Status st = etcd->Launch();
  if (!st.ok()) return st;
  return etcd;
}

EtcdProcess::~EtcdProcess() {
  proc_.reset();
  if (!work_dir_.empty()) RemoveTree(work_dir_);
}

std::string EtcdProcess::endpoint() const {
  return absl::StrCat(tls_ ? "https://" : "", "127.0.0.1:", client_port_);
}

absl::Status EtcdProcess::Launch() {
  const std::string client_url =
      absl::StrCat(tls_ ? "https" : "http", "://127.0.0.1:", client_port_);
  const std::string peer_url = absl::StrCat("http://127.0.0.1:", peer_port_);
  std::string listen = client_url;
  if (!extra_listen_ip_.empty()) {
    absl::StrAppend(&listen, ",http://", extra_listen_ip_, ":", client_port_);
  }
  std::vector<std::string> argv = {"etcd",
                                   "--name=pagoda-test",
                                   "--data-dir=" + data_dir_,
                                   "--listen-client-urls=" + listen,
                                   "--advertise-client-urls=" + client_url,
                                   "--listen-peer-urls=" + peer_url,
                                   "--initial-advertise-peer-urls=" + peer_url,
                                   "--initial-cluster=pagoda-test=" + peer_url,
                                   "--logger=zap",
                                   "--log-level=warn"};
  if (tls_) {
    argv.insert(argv.end(),
                {"--cert-file=" + tls_->server_cert_file, "--key-file=" + tls_->server_key_file,
                 "--client-cert-auth", "--trusted-ca-file=" + tls_->ca_file});
  }
  absl::StatusOr<std::unique_ptr<Subprocess>> proc =
      Subprocess::Start(argv, absl::StrCat(work_dir_, "/etcd.log"));
  if (!proc.ok()) return proc.status();
  proc_ = std::move(*proc);
  return WaitReady(absl::Seconds(15));
}

absl::Status EtcdProcess::WaitReady(absl::Duration timeout) {
  EtcdOptions options;
  options.endpoints = {endpoint()};
  if (tls_) {
    options.tls_ca_file = tls_->ca_file;
    options.tls_cert_file = tls_->client_cert_file;
    options.tls_key_file = tls_->client_key_file;
  }
  options.rpc_timeout = absl::Milliseconds(500);
  options.max_reconnect_backoff = absl::Milliseconds(100);
  absl::StatusOr<std::unique_ptr<EtcdClient>> client = EtcdClient::Create(options);
  if (!client.ok()) return client.status();
  const absl::Time deadline = absl::Now() + timeout;
  absl::Status last;
  while (absl::Now() < deadline) {
    if (!proc_->Running()) {
      return absl::InternalError(
          absl::StrCat("etcd exited during start; see ", work_dir_, "/etcd.log"));
    }
    absl::StatusOr<EtcdRangeResult> r = (*client)->Get("/pagoda-ready-probe");
    if (r.ok()) return absl::OkStatus();
    last = r.status();
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::DeadlineExceededError(absl::StrCat("etcd not ready: ", last.message()));
}

void EtcdProcess::Signal(int sig) {
  if (proc_) proc_->Signal(sig);
}

void EtcdProcess::Kill() {
  if (proc_) proc_->Kill();
}

absl::Status EtcdProcess::Stop() {
  if (!proc_) return absl::OkStatus();
  proc_->Terminate(absl::Seconds(10));
  return absl::OkStatus();
}

absl::Status EtcdProcess::WipeData() {
  if (Running()) return absl::FailedPreconditionError("etcd: wipe while running");
  RemoveTree(data_dir_);
  return absl::OkStatus();
}

absl::Status EtcdProcess::Restart() {
  if (Running()) return absl::FailedPreconditionError("etcd: restart while running");
  return Launch();
}

bool EtcdProcess::Running() { return proc_ != nullptr && proc_->Running(); }

}  // namespace pagoda::cluster::testing
