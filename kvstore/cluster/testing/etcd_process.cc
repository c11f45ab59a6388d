#include "kvstore/cluster/testing/etcd_process.h"

#include <signal.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "pagoda/cluster/etcd_client.h"

namespace pagoda::cluster::testing {

absl::StatusOr<std::unique_ptr<EtcdProcess>> EtcdProcess::Start(
    const std::string& extra_listen_ip) {
  std::unique_ptr<EtcdProcess> etcd(new EtcdProcess());
  etcd->extra_listen_ip_ = extra_listen_ip;
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

std::string EtcdProcess::endpoint() const { return absl::StrCat("127.0.0.1:", client_port_); }

absl::Status EtcdProcess::Launch() {
  const std::string client_url = absl::StrCat("http://127.0.0.1:", client_port_);
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
  absl::StatusOr<std::unique_ptr<Subprocess>> proc =
      Subprocess::Start(argv, absl::StrCat(work_dir_, "/etcd.log"));
  if (!proc.ok()) return proc.status();
  proc_ = std::move(*proc);
  return WaitReady(absl::Seconds(15));
}

absl::Status EtcdProcess::WaitReady(absl::Duration timeout) {
  EtcdOptions options;
  options.endpoints = {endpoint()};
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
