// pagodad: the per-node Pagoda sidecar. Runs on the embedded single-node default with no
// arguments; --config FILE overrides it, flags override both. SIGTERM / SIGINT: graceful stop.
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "json_log_formatter.h"
#include "nlohmann/json.hpp"
#include "pagoda/cluster/etcd_client.h"
#include "pagoda/cluster/registration.h"
#include "pagoda/service/config.h"
#include "pagoda/service/server.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

namespace {

int Fail(const absl::Status& s) {
  spdlog::critical("pagodad: {}", s.ToString());
  return 1;
}

std::string HostName() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

// Registration of this node in etcd (cluster mode): its NodeInfo under a kept-alive lease.
struct ClusterMembership {
  std::unique_ptr<pagoda::cluster::EtcdClient> etcd;
  std::unique_ptr<pagoda::cluster::NodeRegistration> registration;
};

absl::StatusOr<ClusterMembership> JoinCluster(const pagoda::service::ServiceConfig& c, int gport,
                                              int hport) {
  ClusterMembership m;
  pagoda::cluster::EtcdOptions eo;
  eo.endpoints = c.etcd_endpoints;
  eo.tls_ca_file = c.etcd_ca;
  eo.tls_cert_file = c.etcd_cert;
  eo.tls_key_file = c.etcd_key;
  absl::StatusOr<std::unique_ptr<pagoda::cluster::EtcdClient>> etcd =
      pagoda::cluster::EtcdClient::Create(eo);
  if (!etcd.ok()) return etcd.status();
  m.etcd = std::move(*etcd);
  pagoda::cluster::NodeInfo node;
  node.id = c.node_id.empty() ? HostName() : c.node_id;
  node.address = c.advertise_address;
  if (node.address.empty()) {
    node.address = (c.grpc_host == "0.0.0.0" || c.grpc_host == "::") ? HostName() : c.grpc_host;
  }
  node.grpc_port = gport;
  node.http_port = hport > 0 ? hport : 0;
  node.tiers.push_back("host");
  node.capacity_bytes["host"] = c.host_bytes;
  if (c.ssd_bytes > 0) {
    node.tiers.push_back("ssd");
    node.capacity_bytes["ssd"] = c.ssd_bytes;
  }
  if (c.gpu_bytes > 0) {
    node.tiers.push_back("gpu");
    node.capacity_bytes["gpu"] = c.gpu_bytes;
  }
  node.version = "0.1.0";
  pagoda::cluster::RegistrationOptions ro;
  ro.prefix = c.cluster_prefix;
  ro.lease_ttl_seconds = c.lease_ttl_s;
  ro.keepalive_interval = absl::Seconds(c.lease_ttl_s) / 3;
  ro.require_first_registration = false;  // keep serving local clients while etcd is down
  absl::StatusOr<std::unique_ptr<pagoda::cluster::NodeRegistration>> reg =
      pagoda::cluster::NodeRegistration::Start(m.etcd.get(), node, ro);
  if (!reg.ok()) return reg.status();
  m.registration = std::move(*reg);
  spdlog::info("cluster: node {} ({}:{}) joins via etcd {} under {}", node.id, node.address,
               node.grpc_port, absl::StrJoin(c.etcd_endpoints, ","), c.cluster_prefix);
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  using pagoda::service::ServiceConfig;
  CLI::App app{"pagodad: tier-aware KV-cache store for LLM inference (per-node service)"};
  std::string config_path, port_file;
  bool print_default = false;
  // Flag values land in optionals so that only flags actually given override the config.
  std::optional<int> grpc_port, http_port, data_port;
  std::optional<std::string> grpc_host, http_host, data_dir, token, local_socket, log_level,
      tls_cert, tls_key, tls_client_ca;
  std::optional<uint64_t> host_mib, ssd_mib;
  std::optional<double> grace_s;
  std::optional<std::string> etcd_endpoints, etcd_ca, etcd_cert, etcd_key, node_id,
      advertise_address;
  app.add_option("--config", config_path, "YAML config file (default: embedded single-node)");
  app.add_flag("--print-default-config", print_default, "print the embedded default and exit");
  app.add_option("--grpc-host", grpc_host, "gRPC bind address");
  app.add_option("--grpc-port", grpc_port, "gRPC port (0 = any free port)");
  app.add_option("--http-host", http_host, "/metrics + /healthz bind address");
  app.add_option("--http-port", http_port, "/metrics + /healthz port (0 = any, -1 = off)");
  app.add_option("--data-port", data_port,
                 "TCP port of the stream data path beside gRPC (0 = any free port, -1 = off)")
      ->check(CLI::Range(-1, 65535));
  app.add_option("--data-dir", data_dir, "data directory (SSD tier, local socket)");
  app.add_option("--host-mib", host_mib, "host tier (shared arena) size in MiB")
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 26));
  app.add_option("--ssd-mib", ssd_mib, "SSD tier size in MiB (0 = no SSD tier)")
      ->check(CLI::Range(uint64_t{0}, uint64_t{1} << 30));
  app.add_option("--local-socket", local_socket, "unix socket of the zero-copy path, or 'off'");
  std::optional<bool> ucx;
  app.add_option(
      "--ucx", ucx,
      "serve remote page bytes over UCX (true/false; default false: trusts every UCX peer)");
  app.add_option("--token", token, "bearer token required from clients (or env PAGODA_TOKEN)")
      ->envname("PAGODA_TOKEN");
  app.add_option("--tls-cert", tls_cert, "PEM server certificate (enables TLS)");
  app.add_option("--tls-key", tls_key, "PEM server key");
  app.add_option("--tls-client-ca", tls_client_ca, "PEM CA of client certificates (mTLS)");
  app.add_option("--log-level", log_level, "trace|debug|info|warn|error");
  app.add_option("--port-file", port_file, "write the bound ports here as JSON once serving");
  app.add_option("--shutdown-grace-s", grace_s, "seconds in-flight calls get on SIGTERM (10)")
      ->check(CLI::Range(0.0, 3600.0));
  app.add_option("--etcd", etcd_endpoints,
                 "comma-separated etcd host:port list; joins the cluster (\"\" = standalone)");
  app.add_option("--etcd-ca", etcd_ca, "PEM CA of etcd's server certificate (https:// endpoints)");
  app.add_option("--etcd-cert", etcd_cert, "PEM client certificate for etcd (with --etcd-key)");
  app.add_option("--etcd-key", etcd_key, "PEM key of --etcd-cert");
  app.add_option("--node-id", node_id, "this node's id in the cluster (default: host name)");
  app.add_option("--advertise-address", advertise_address, "address other machines dial");
  CLI11_PARSE(app, argc, argv);
  if (print_default) {
    std::cout << pagoda::service::DefaultConfigYaml();
    return 0;
  }

  // Block the stop signals before any thread starts, so only sigwait below sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  absl::StatusOr<ServiceConfig> loaded = pagoda::service::LoadConfig(config_path);
  if (!loaded.ok()) return Fail(loaded.status());
  ServiceConfig c = *loaded;
  if (grpc_host) c.grpc_host = *grpc_host;
  if (grpc_port) c.grpc_port = *grpc_port;
  if (http_host) c.http_host = *http_host;
  if (http_port) c.http_port = *http_port;
  if (data_port) c.data_port = *data_port;
  if (data_dir) c.data_dir = *data_dir;
  if (host_mib) c.host_bytes = *host_mib << 20;
  if (ssd_mib) c.ssd_bytes = *ssd_mib << 20;
  if (local_socket) c.local_socket = *local_socket;
  if (ucx) c.ucx = *ucx;
  if (token) c.token = *token;
  if (tls_cert) c.tls_cert = *tls_cert;
  if (tls_key) c.tls_key = *tls_key;
  if (tls_client_ca) c.tls_client_ca = *tls_client_ca;
  if (log_level) c.log_level = *log_level;
  if (etcd_endpoints) {
    c.etcd_endpoints.clear();
    for (absl::string_view e : absl::StrSplit(*etcd_endpoints, ',', absl::SkipWhitespace())) {
      c.etcd_endpoints.emplace_back(e);
    }
  }
  if (etcd_ca) c.etcd_ca = *etcd_ca;
  if (etcd_cert) c.etcd_cert = *etcd_cert;
  if (etcd_key) c.etcd_key = *etcd_key;
  if (node_id) c.node_id = *node_id;
  if (advertise_address) c.advertise_address = *advertise_address;

  auto logger = spdlog::stderr_logger_mt("pagodad");
  spdlog::set_default_logger(logger);
  if (c.log_json) {
    spdlog::set_formatter(std::make_unique<pagoda::service::JsonLogFormatter>());
  } else {
    spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%fZ %l pagodad[%P] %v", spdlog::pattern_time_type::utc);
  }
  spdlog::set_level(spdlog::level::from_str(c.log_level));
  if (absl::Status s = pagoda::service::ValidateConfig(c); !s.ok()) return Fail(s);

  absl::StatusOr<std::unique_ptr<pagoda::service::Server>> server =
      pagoda::service::Server::Start(c);
  if (!server.ok()) return Fail(server.status());
  const int gport = (*server)->grpc_port();
  const int hport = (*server)->http_port();
  const std::string sock = (*server)->local_socket();
  spdlog::info("serving: grpc={}:{} http={} local={} data_dir={} host_bytes={} ssd_bytes={}",
               c.grpc_host, gport, hport < 0 ? "off" : absl::StrCat(c.http_host, ":", hport),
               sock.empty() ? "off" : sock, c.data_dir, c.host_bytes, c.ssd_bytes);
  // One machine-readable line on stdout for scripts and tests.
  std::printf("pagodad ready grpc_port=%d http_port=%d local_socket=%s\n", gport, hport,
              sock.empty() ? "off" : sock.c_str());
  std::fflush(stdout);
  if (!port_file.empty()) {
    const nlohmann::json ports = {{"grpc_port", gport},
                                  {"http_port", hport},
                                  {"local_socket", sock},
                                  {"pid", static_cast<int64_t>(getpid())}};
    std::string tmp = port_file + ".tmp";
    {
      std::ofstream out(tmp);
      out << ports.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
      if (!out.flush()) return Fail(absl::UnavailableError("cannot write --port-file " + tmp));
    }
    // Readers never see a half-written file.
    if (std::rename(tmp.c_str(), port_file.c_str()) != 0) {
      return Fail(absl::UnavailableError("cannot rename " + tmp + " to " + port_file));
    }
  }

  std::optional<ClusterMembership> cluster;
  if (!c.etcd_endpoints.empty()) {
    absl::StatusOr<ClusterMembership> joined = JoinCluster(c, gport, hport);
    if (!joined.ok()) return Fail(joined.status());
    cluster = std::move(*joined);
  }

  int sig = 0;
  sigwait(&stop_signals, &sig);
  if (cluster) {
    // Leave first, so clients stop routing new pages here while in-flight calls drain.
    cluster->registration->Stop(/*deregister=*/true);
    spdlog::info("cluster: left the cluster");
  }
  spdlog::info("signal {}: draining in-flight requests, then flushing", sig);
  absl::Status s = (*server)->Shutdown(absl::Seconds(grace_s.value_or(10.0)));
  server->reset();
  if (!s.ok()) return Fail(s);
  spdlog::info("stopped cleanly");
  return 0;
}
