#include "pagoda/service/server.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/resource_quota.h>
#include <grpcpp/security/server_credentials.h>
#include <sys/resource.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "auth.h"
#include "call_watchdog.h"
#include "data_stream.h"
#include "grpc_service.h"
#include "http_server.h"
#include "local_server.h"
#include "metrics.h"
#include "pagoda/kvstore/store.h"
#include "spdlog/spdlog.h"
#include "ucx_control.h"

namespace pagoda::service {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read '", path, "'"));
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

absl::StatusOr<StoreOptions> ToStoreOptions(const ServiceConfig& c) {
  StoreOptions o;
  o.data_dir = c.ssd_bytes > 0 ? c.data_dir + "/ssd" : "";
  o.host_capacity_bytes = c.host_bytes;
  o.segment_bytes = c.host_segment_bytes;
  // UCX leases may be as long as the config says (the store's default cap is 5 s).
  o.max_lease_duration = std::max(o.max_lease_duration, absl::Milliseconds(c.ucx_lease_ms));
  o.ssd_capacity_bytes = c.ssd_bytes;
  o.gpu_capacity_bytes = c.gpu_bytes;
  o.ssd_sync_writes = c.ssd_sync_writes;
  o.ssd_direct_writes = c.ssd_direct_writes;
  o.checkpoint_interval = absl::Milliseconds(c.checkpoint_ms);
  o.layouts.clear();
  for (const LayoutConfig& l : c.layouts) {
    PageLayout pl{l.dtype == "bf16" ? DType::kBf16 : DType::kFp16, l.kv_heads, l.head_dim,
                  l.page_tokens};
    if (absl::Status s = pl.Validate(); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("config store.layouts: ", s.message()));
    }
    o.layouts.push_back(pl);
  }
  for (const auto& [name, t] : c.tenants) {
    TenantQuota q;
    q.tier_bytes[static_cast<int>(Tier::kHost)] = t.quota_bytes;
    q.tier_bytes[static_cast<int>(Tier::kSsd)] = t.ssd_quota_bytes;
    q.pinned_bytes = t.pin_quota_bytes;
    o.tenant_quotas[name] = q;
  }
  return o;
}

// Raises the soft limit on open files to the hard one and checks that the configured local
// connections fit in it (with room for gRPC, SSD segments and RocksDB).
absl::Status RaiseFileLimit(const ServiceConfig& c) {
  rlimit r{};
  if (getrlimit(RLIMIT_NOFILE, &r) != 0) return absl::OkStatus();
  if (r.rlim_cur < r.rlim_max) {
    r.rlim_cur = r.rlim_max;
    (void)setrlimit(RLIMIT_NOFILE, &r);
    (void)getrlimit(RLIMIT_NOFILE, &r);
  }
  const uint64_t need = static_cast<uint64_t>(c.local_max_connections) + 512;
  if (r.rlim_cur != RLIM_INFINITY && r.rlim_cur < need) {
    return absl::InvalidArgumentError(
        absl::StrCat("config: server.local_max_connections ", c.local_max_connections, " needs ",
                     need, " open files; this process may open ", r.rlim_cur, " (ulimit -n)"));
  }
  return absl::OkStatus();
}

class ServerImpl final : public Server {
 public:
  explicit ServerImpl(const ServiceConfig& c) : config_(c), auth_(c) {}
  ~ServerImpl() override { (void)Shutdown(absl::Seconds(2)); }

  absl::Status Init() {
    if (absl::Status s = RaiseFileLimit(config_); !s.ok()) return s;
    std::error_code ec;
    std::filesystem::create_directories(config_.data_dir, ec);
    if (ec) {
      return absl::UnavailableError(
          absl::StrCat("cannot create data dir '", config_.data_dir, "': ", ec.message()));
    }
    absl::StatusOr<StoreOptions> so = ToStoreOptions(config_);
    if (!so.ok()) return so.status();
    absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(*so);
    if (!store.ok()) return store.status();
    store_ = std::move(*store);

    local_path_ = LocalSocketPath(config_);
    if (!local_path_.empty()) {
      // Health reports this path to clients, which may run in another directory.
      std::error_code aec;
      std::string abs = std::filesystem::absolute(local_path_, aec).lexically_normal().string();
      if (!aec && abs.size() < 108) local_path_ = abs;
    }
    if (!local_path_.empty()) {
      LocalServerOptions lo;
      lo.max_connections = config_.local_max_connections;
      lo.threads = config_.local_threads;
      lo.handshake_timeout = absl::Milliseconds(config_.local_handshake_ms);
      lo.io_timeout = absl::Milliseconds(config_.local_io_timeout_ms);
      lo.reservation_timeout = absl::Milliseconds(config_.reservation_timeout_ms);
      lo.instance_id = instance_id_;
      lo.socket_group = config_.local_socket_group;
      lo.allowed_uids = config_.local_allowed_uids;
      lo.allowed_gids = config_.local_allowed_gids;
      local_ = std::make_unique<LocalServer>(store_.get(), &auth_, &metrics_, lo);
      if (absl::Status s = local_->Start(local_path_); !s.ok()) return s;
    }

    service_ = std::make_unique<GrpcService>(
        store_.get(), &auth_, &metrics_, config_,
        ServiceInfo{.local_socket = local_path_, .instance_id = instance_id_});
    if (local_) service_->SetLocalClientsSource([l = local_.get()] { return l->connections(); });
    if (config_.data_port >= 0 && !config_.tls_cert.empty()) {
      spdlog::info("stream data path off: gRPC uses TLS and the data connection would not");
    } else if (config_.data_port >= 0) {
      // Remote page bytes on plain TCP next to gRPC (issue 15); on the gRPC host.
      stream_ = std::make_unique<DataStreamServer>(DataStreamOptions{
          .max_connections = config_.local_max_connections, .instance_id = instance_id_});
      if (absl::Status s = stream_->Start(config_.grpc_host, config_.data_port); !s.ok()) {
        return s;
      }
      service_->SetDataStream(stream_.get());
    }
    if (config_.ucx) {
      // On by default where UCX works; a machine without it still serves gRPC bytes.
      absl::StatusOr<std::unique_ptr<UcxControl>> ucx = UcxControl::Create(
          store_.get(), &metrics_,
          UcxControlOptions{.instance_id = instance_id_,
                            .default_lease = absl::Milliseconds(config_.ucx_lease_ms),
                            .reservation_ttl = absl::Milliseconds(config_.reservation_timeout_ms),
                            .net_devices = UcxNetDevices(config_)});
      if (ucx.ok()) {
        ucx_ = std::move(*ucx);
        service_->SetUcx(ucx_.get());
      } else {
        spdlog::warn("UCX path unavailable, remote bytes go over gRPC: {}",
                     ucx.status().ToString());
      }
    }

    watchdog_ = std::make_unique<CallWatchdog>(absl::Milliseconds(config_.reservation_timeout_ms),
                                               [u = ucx_.get()] {
                                                 if (u != nullptr) u->SweepNow();
                                               });
    service_->SetWatchdog(watchdog_.get());

    std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
    if (!config_.tls_cert.empty()) {
      grpc::SslServerCredentialsOptions ssl;
      absl::StatusOr<std::string> cert = ReadFile(config_.tls_cert);
      absl::StatusOr<std::string> key = ReadFile(config_.tls_key);
      if (!cert.ok()) return cert.status();
      if (!key.ok()) return key.status();
      ssl.pem_key_cert_pairs.push_back({*key, *cert});
      if (!config_.tls_client_ca.empty()) {
        absl::StatusOr<std::string> ca = ReadFile(config_.tls_client_ca);
        if (!ca.ok()) return ca.status();
        ssl.pem_root_certs = *ca;
        ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
      }
      creds = grpc::SslServerCredentials(ssl);
    }
    grpc::ServerBuilder builder;
    builder.AddListeningPort(absl::StrCat(config_.grpc_host, ":", config_.grpc_port), creds,
                             &grpc_port_);
    builder.SetMaxReceiveMessageSize(static_cast<int>(config_.max_message_bytes));
    builder.SetMaxSendMessageSize(static_cast<int>(config_.max_message_bytes));
    // Dead peers: keepalive pings find them, and their calls (and reservations) end.
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, config_.grpc_keepalive_ms);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                               std::min(config_.grpc_keepalive_ms, 10000));
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    grpc::ResourceQuota quota("pagodad");
    quota.SetMaxThreads(config_.grpc_max_threads);
    builder.SetResourceQuota(quota);
    builder.RegisterService(service_.get());
    grpc_ = builder.BuildAndStart();
    if (!grpc_ || grpc_port_ == 0) {
      return absl::UnavailableError(absl::StrCat("cannot listen on gRPC ", config_.grpc_host, ":",
                                                 config_.grpc_port, " (port in use?)"));
    }

    if (config_.http_port >= 0) {
      absl::StatusOr<std::unique_ptr<HttpServer>> http =
          HttpServer::Start(config_.http_host, config_.http_port,
                            [this](const std::string& path) { return Http(path); });
      if (!http.ok()) return http.status();
      http_ = std::move(*http);
      http_port_ = http_->port();
      service_->SetHttpPort(http_port_);
    }
    return absl::OkStatus();
  }

  int grpc_port() const override { return grpc_port_; }
  int http_port() const override { return http_port_; }
  std::string local_socket() const override { return local_path_; }

  absl::Status Shutdown(absl::Duration grace) override {
    if (stopped_) return flush_status_;
    stopped_ = true;
    draining_ = true;
    if (service_) service_->SetServing(false);
    if (grpc_) {
      // Wait for the calls in flight ourselves: grpc::Server::Shutdown(deadline) also waits for
      // idle client connections to go away, i.e. always the whole grace with clients connected.
      const absl::Time until = absl::Now() + grace;
      while (service_->in_flight() > 0 && absl::Now() < until)
        absl::SleepFor(absl::Milliseconds(2));
      grpc_->Shutdown(std::chrono::system_clock::now());  // cancels what is still running
      grpc_->Wait();
    }
    spdlog::info("shutdown: gRPC drained");
    watchdog_.reset();  // no call is watched any more; stops the UCX sweep tick
    ucx_.reset();  // no control call runs any more: drop its leases, reservations, registration
    if (stream_) stream_->Stop();
    if (local_) local_->Stop();
    spdlog::info("shutdown: local clients closed");
    http_.reset();  // waits for the scrapes in flight
    if (store_ && config_.persist_on_shutdown && store_->HasTier(Tier::kSsd)) {
      // Every acknowledged page survives a graceful stop: each page whose only copy is in memory
      // (written, promoted or prefetched) gets one on SSD.
      absl::StatusOr<CheckpointResult> r = store_->Checkpoint();
      if (!r.ok()) {
        spdlog::error("shutdown: copying memory-only pages to SSD failed: {}",
                      r.status().ToString());
      } else if (r->pages_skipped > 0) {
        spdlog::error("shutdown: {} memory-only pages did not fit on SSD and are lost",
                      r->pages_skipped);
      } else {
        spdlog::info("shutdown: copied {} memory-only pages to SSD", r->pages_written);
      }
    }
    if (store_) {
      flush_status_ = store_->Flush();
      if (!flush_status_.ok()) spdlog::error("store flush failed: {}", flush_status_.ToString());
    }
    return flush_status_;
  }

 private:
  HttpReply Http(const std::string& path) {
    if (path == "/healthz") {
      if (draining_) return {503, "text/plain", "draining\n"};
      return {200, "text/plain", "ok\n"};
    }
    if (path == "/metrics") {
      StoreStats st = store_->Stats();
      std::vector<TierSample> tiers;
      for (int t = 0; t < kNumTiers; ++t) {
        const TierStats& ts = st.tiers[t];
        if (!ts.present) continue;
        tiers.push_back({std::string(TierName(static_cast<Tier>(t))), ts.capacity_bytes,
                         ts.used_bytes, ts.pages, ts.hits, ts.evictions, ts.promotions});
      }
      DurabilitySample d;
      d.memory_only_pages = st.memory_only_pages;
      d.checkpoints = st.checkpoints;
      d.checkpoint_failures = st.checkpoint_failures;
      d.ssd_disk_bytes = st.ssd_disk_bytes;
      d.ssd_limit_bytes = st.ssd_limit_bytes;
      d.ssd_full = st.ssd_full;
      d.ssd_regrown = st.ssd_regrown;
      if (st.last_checkpoint_start != absl::InfinitePast()) {
        d.durable_before_unix_ms = absl::ToUnixMillis(st.last_checkpoint_start);
      }
      return {200, "text/plain; version=0.0.4; charset=utf-8",
              metrics_.Render(tiers, st.misses, d)};
    }
    return {404, "text/plain", "not found (try /metrics or /healthz)\n"};
  }

  const ServiceConfig config_;
  Authorizer auth_;
  ServiceMetrics metrics_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<UcxControl> ucx_;
  std::unique_ptr<CallWatchdog> watchdog_;
  std::unique_ptr<DataStreamServer> stream_;
  std::unique_ptr<LocalServer> local_;
  std::unique_ptr<GrpcService> service_;
  std::unique_ptr<grpc::Server> grpc_;
  std::unique_ptr<HttpServer> http_;
  std::string local_path_;
  const uint64_t instance_id_ = absl::Uniform<uint64_t>(absl::BitGen()) | 1;  // never 0
  int grpc_port_ = 0;
  int http_port_ = -1;
  std::atomic<bool> draining_{false};
  bool stopped_ = false;
  absl::Status flush_status_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServiceConfig& config) {
  if (absl::Status s = ValidateConfig(config); !s.ok()) return s;
  auto server = std::make_unique<ServerImpl>(config);
  if (absl::Status s = server->Init(); !s.ok()) {
    (void)server->Shutdown(absl::ZeroDuration());
    return s;
  }
  return server;
}

}  // namespace pagoda::service
