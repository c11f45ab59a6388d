// Test helper: a real pagodad process on 127.0.0.1 with free ports (port 0, read back from its
// --port-file), its own temporary data directory and log file.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "pagoda/client/client.h"

namespace pagoda::testing {

// A config for tests: 64 MiB host tier, 256 MiB SSD, three layouts (kSmall, kDefault, kLarge).
std::string TestConfigYaml();
// 512-byte pages (fp16, 1 KV head, head_dim 8, 16 tokens).
PageLayout SmallLayout();
// 2 MiB pages (fp16, 8 KV heads, head_dim 128, 512 tokens).
PageLayout LargeLayout();

class PagodadProcess {
 public:
  struct Options {
    std::string config_yaml = TestConfigYaml();
    std::vector<std::string> extra_args;
    std::string data_dir;  // "" = a fresh temporary directory (removed by the destructor)
  };
  static absl::StatusOr<std::unique_ptr<PagodadProcess>> Start(const Options& options);
  ~PagodadProcess();  // SIGKILLs a still-running server; removes a temporary data dir

  std::string target() const { return "127.0.0.1:" + std::to_string(grpc_port_); }
  int grpc_port() const { return grpc_port_; }
  int http_port() const { return http_port_; }
  const std::string& local_socket() const { return local_socket_; }
  const std::string& data_dir() const { return data_dir_; }
  pid_t pid() const { return pid_; }

  // Sends `sig` and waits up to `timeout_s` for the exit. Returns the exit code (>= 0), or
  // -signal when killed by a signal; error on timeout.
  absl::StatusOr<int> Stop(int sig, double timeout_s = 30);
  // Keeps the data dir when the object dies (for restarts).
  void KeepDataDir() { owns_dir_ = false; }
  std::string Log() const;

  ClientOptions ClientOpts(const std::string& tenant, DataPathKind path) const;

 private:
  pid_t pid_ = -1;
  int grpc_port_ = 0;
  int http_port_ = 0;
  std::string local_socket_;
  std::string data_dir_;
  bool owns_dir_ = false;
};

// Deterministic bytes for a page (varies with key and seed).
std::vector<uint8_t> PageBytes(const PageKey& key, size_t size, uint64_t seed = 0);
// A raw HTTP GET of 127.0.0.1:port/path; returns status line + body.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path);
// The value of a metric line "name value" in a /metrics page; -1 when absent.
double MetricValue(const std::string& page, const std::string& name);

}  // namespace pagoda::testing
