// A real single-member etcd on 127.0.0.1 with free ports and a temp data dir, started and stopped
// by a test fixture itself (tests never rely on an etcd started by CI).
#ifndef PAGODA_KVSTORE_CLUSTER_TESTING_ETCD_PROCESS_H_
#define PAGODA_KVSTORE_CLUSTER_TESTING_ETCD_PROCESS_H_

#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kvstore/cluster/testing/subprocess.h"

namespace pagoda::cluster::testing {

// A throw-away PKI made with the openssl CLI: one CA, a server certificate for 127.0.0.1 /
// localhost, a client certificate signed by the CA, and a second, unrelated CA (for "wrong CA"
// tests). PEM file paths.
struct TestPki {
  std::string ca_file, server_cert_file, server_key_file, client_cert_file, client_key_file;
  std::string other_ca_file;
};
absl::StatusOr<TestPki> MakeTestPki(const std::string& dir);

// Thread safety: not thread-safe; one test thread drives it.
class EtcdProcess {
 public:
  // etcd serving clients over TLS only (https://), requiring client certificates signed by
  // pki.ca_file (--client-cert-auth). endpoint() then names the https:// URL.
  static absl::StatusOr<std::unique_ptr<EtcdProcess>> StartTls(const TestPki& pki);

  // Picks ports and a data dir and starts etcd; returns once it answers a Range. etcd listens
  // on 127.0.0.1 and, when given, also on `extra_listen_ip` (e.g. a veth address that a node in
  // another network namespace dials).
  static absl::StatusOr<std::unique_ptr<EtcdProcess>> Start(
      const std::string& extra_listen_ip = "");
  ~EtcdProcess();  // kills etcd, removes the data dir

  std::string endpoint() const;  // "127.0.0.1:<client port>" ("https://..." with TLS)
  int client_port() const { return client_port_; }
  const std::string& data_dir() const { return data_dir_; }

  void Kill();              // SIGKILL, keeps the data
  void Signal(int sig);     // e.g. SIGSTOP / SIGCONT: a hung etcd
  absl::Status Stop();      // SIGTERM, keeps the data
  absl::Status WipeData();  // only while stopped: a restart then starts an empty etcd
  absl::Status Restart();   // same ports, same data dir; returns once ready
  bool Running();

 private:
  EtcdProcess() = default;
  static absl::StatusOr<std::unique_ptr<EtcdProcess>> Prepare(std::unique_ptr<EtcdProcess> etcd);
  absl::Status Launch();
  absl::Status WaitReady(absl::Duration timeout);

  std::string data_dir_;
  std::string work_dir_;
  int client_port_ = 0;
  int peer_port_ = 0;
  std::string extra_listen_ip_;
  std::optional<TestPki> tls_;
  std::unique_ptr<Subprocess> proc_;
};

}  // namespace pagoda::cluster::testing

#endif  // PAGODA_KVSTORE_CLUSTER_TESTING_ETCD_PROCESS_H_
