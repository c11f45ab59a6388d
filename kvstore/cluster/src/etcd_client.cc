#include "pagoda/cluster/etcd_client.h"

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "etcd_rpc.grpc.pb.h"

namespace pagoda::cluster {
namespace {

// The one place gRPC status codes become absl ones.
absl::Status FromGrpc(const grpc::Status& s, const char* what) {
  if (s.ok()) return absl::OkStatus();
  const std::string msg = absl::StrCat("etcd ", what, ": ", s.error_message());
  switch (s.error_code()) {
    case grpc::StatusCode::CANCELLED:
      return absl::CancelledError(msg);
    case grpc::StatusCode::INVALID_ARGUMENT:
      return absl::InvalidArgumentError(msg);
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return absl::DeadlineExceededError(msg);
    case grpc::StatusCode::NOT_FOUND:
      return absl::NotFoundError(msg);
    case grpc::StatusCode::ALREADY_EXISTS:
      return absl::AlreadyExistsError(msg);
    case grpc::StatusCode::PERMISSION_DENIED:
      return absl::PermissionDeniedError(msg);
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return absl::ResourceExhaustedError(msg);
    case grpc::StatusCode::FAILED_PRECONDITION:
      return absl::FailedPreconditionError(msg);
    case grpc::StatusCode::OUT_OF_RANGE:
      return absl::OutOfRangeError(msg);
    case grpc::StatusCode::UNAUTHENTICATED:
      return absl::UnauthenticatedError(msg);
    case grpc::StatusCode::UNAVAILABLE:
      return absl::UnavailableError(msg);
    default:
      return absl::InternalError(msg);
  }
}

// etcd reports an unknown lease as NOT_FOUND with "requested lease not found".
bool IsLeaseNotFound(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::NOT_FOUND ||
         s.error_message().find("lease not found") != std::string::npos;
}

// Only failures that say nothing about the request itself move us to another endpoint.
bool ShouldFailOver(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::UNAVAILABLE ||
         s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
}

EtcdKeyValue FromProto(const mvccpb::KeyValue& kv) {
  EtcdKeyValue out;
  out.key = kv.key();
  out.value = kv.value();
  out.create_revision = kv.create_revision();
  out.mod_revision = kv.mod_revision();
  out.version = kv.version();
  out.lease = kv.lease();
  return out;
}

struct Endpoint {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<etcdserverpb::KV::Stub> kv;
  std::unique_ptr<etcdserverpb::Lease::Stub> lease;
  std::unique_ptr<etcdserverpb::Watch::Stub> watch;
};

class GrpcEtcdWatch final : public EtcdWatch {
 public:
  GrpcEtcdWatch(std::unique_ptr<grpc::ClientContext> ctx,
                std::unique_ptr<grpc::ClientReaderWriter<etcdserverpb::WatchRequest,
                                                         etcdserverpb::WatchResponse>>
                    stream)
      : ctx_(std::move(ctx)), stream_(std::move(stream)) {}

  ~GrpcEtcdWatch() override {
    Cancel();
    if (!finished_) {
      // Drain so Finish() does not block on unread messages.
      etcdserverpb::WatchResponse resp;
      while (stream_->Read(&resp)) {
      }
      stream_->Finish().IgnoreError();
    }
  }

  absl::StatusOr<std::vector<EtcdEvent>> Next() override {
    if (finished_) return absl::FailedPreconditionError("etcd watch already finished");
    etcdserverpb::WatchResponse resp;
    while (stream_->Read(&resp)) {
      if (resp.canceled()) {
        if (resp.compact_revision() > 0) {
          return Finish(absl::OutOfRangeError(
              absl::StrCat("etcd watch: revision compacted at ", resp.compact_revision())));
        }
        return Finish(
            absl::UnavailableError(absl::StrCat("etcd watch canceled: ", resp.cancel_reason())));
      }
      if (resp.events_size() == 0) continue;  // progress notification
      std::vector<EtcdEvent> events;
      events.reserve(resp.events_size());
      for (const mvccpb::Event& e : resp.events()) {
        EtcdEvent ev;
        ev.type =
            e.type() == mvccpb::Event::DELETE ? EtcdEvent::Type::kDelete : EtcdEvent::Type::kPut;
        ev.kv = FromProto(e.kv());
        events.push_back(std::move(ev));
      }
      return events;
    }
    grpc::Status s = stream_->Finish();
    finished_ = true;
    if (cancelled_.load()) return absl::CancelledError("etcd watch cancelled");
    if (s.ok()) return absl::UnavailableError("etcd watch stream ended");
    absl::Status st = FromGrpc(s, "watch");
    return absl::IsCancelled(st) ? absl::UnavailableError(st.message()) : st;
  }

  void Cancel() override {
    cancelled_.store(true);
    ctx_->TryCancel();
  }

 private:
  absl::Status Finish(absl::Status st) {
    ctx_->TryCancel();
    etcdserverpb::WatchResponse resp;
    while (stream_->Read(&resp)) {
    }
    stream_->Finish().IgnoreError();
    finished_ = true;
    return st;
  }

  std::unique_ptr<grpc::ClientContext> ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<etcdserverpb::WatchRequest, etcdserverpb::WatchResponse>>
      stream_;
  std::atomic<bool> cancelled_{false};
  bool finished_ = false;  // touched only by the thread calling Next() (and the destructor)
};

class GrpcEtcdClient final : public EtcdClient {
 public:
  GrpcEtcdClient(const EtcdOptions& options, std::vector<Endpoint> endpoints)
      : options_(options), endpoints_(std::move(endpoints)) {}

  absl::StatusOr<int64_t> Put(std::string_view key, std::string_view value,
                              int64_t lease) override {
    if (key.empty()) return absl::InvalidArgumentError("etcd put: empty key");
    etcdserverpb::PutRequest req;
    req.set_key(std::string(key));
    req.set_value(std::string(value));
    req.set_lease(lease);
    etcdserverpb::PutResponse resp;
    absl::Status st = Call(
        "put", [&](Endpoint& ep, grpc::ClientContext* ctx) { return ep.kv->Put(ctx, req, &resp); });
    if (!st.ok()) return st;
    return resp.header().revision();
  }

  absl::StatusOr<bool> PutIfAbsent(std::string_view key, std::string_view value,
                                   int64_t lease) override {
    if (key.empty()) return absl::InvalidArgumentError("etcd put-if-absent: empty key");
    etcdserverpb::TxnRequest req;
    etcdserverpb::Compare* cmp = req.add_compare();
    cmp->set_result(etcdserverpb::Compare::EQUAL);
    cmp->set_target(etcdserverpb::Compare::CREATE);
    cmp->set_key(std::string(key));
    cmp->set_create_revision(0);
    etcdserverpb::PutRequest* put = req.add_success()->mutable_request_put();
    put->set_key(std::string(key));
    put->set_value(std::string(value));
    put->set_lease(lease);
    etcdserverpb::TxnResponse resp;
    absl::Status st = Call(
        "txn", [&](Endpoint& ep, grpc::ClientContext* ctx) { return ep.kv->Txn(ctx, req, &resp); });
    if (!st.ok()) return st;
    return resp.succeeded();
  }

  absl::StatusOr<EtcdRangeResult> Get(std::string_view key) override {
    if (key.empty()) return absl::InvalidArgumentError("etcd get: empty key");
    return Range(key, "");
  }

  absl::StatusOr<EtcdRangeResult> GetPrefix(std::string_view prefix) override {
    if (prefix.empty()) return absl::InvalidArgumentError("etcd get-prefix: empty prefix");
    return Range(prefix, PrefixRangeEnd(prefix));
  }

  absl::StatusOr<int64_t> Delete(std::string_view key) override {
    if (key.empty()) return absl::InvalidArgumentError("etcd delete: empty key");
    return DeleteRange(key, "");
  }

  absl::StatusOr<int64_t> DeletePrefix(std::string_view prefix) override {
    if (prefix.empty()) return absl::InvalidArgumentError("etcd delete-prefix: empty prefix");
    return DeleteRange(prefix, PrefixRangeEnd(prefix));
  }

  absl::StatusOr<EtcdLease> GrantLease(int64_t ttl_seconds) override {
    if (ttl_seconds < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("etcd lease grant: ttl must be >= 1 s, got ", ttl_seconds));
    }
    etcdserverpb::LeaseGrantRequest req;
    req.set_ttl(ttl_seconds);
    etcdserverpb::LeaseGrantResponse resp;
    absl::Status st = Call("lease grant", [&](Endpoint& ep, grpc::ClientContext* ctx) {
      return ep.lease->LeaseGrant(ctx, req, &resp);
    });
    if (!st.ok()) return st;
    if (!resp.error().empty()) {
      return absl::InternalError(absl::StrCat("etcd lease grant: ", resp.error()));
    }
    return EtcdLease{resp.id(), resp.ttl()};
  }

  absl::StatusOr<int64_t> KeepAliveOnce(int64_t lease_id) override {
    etcdserverpb::LeaseKeepAliveResponse resp;
    bool got = false;
    absl::Status st = Call("lease keep-alive", [&](Endpoint& ep, grpc::ClientContext* ctx) {
      auto stream = ep.lease->LeaseKeepAlive(ctx);
      etcdserverpb::LeaseKeepAliveRequest req;
      req.set_id(lease_id);
      if (stream->Write(req)) {
        stream->WritesDone();
        got = stream->Read(&resp);
      }
      // Finish() needs every message read; the server sends exactly one per request.
      etcdserverpb::LeaseKeepAliveResponse extra;
      while (stream->Read(&extra)) {
      }
      return stream->Finish();
    });
    if (!st.ok()) return st;
    if (!got) return absl::UnavailableError("etcd lease keep-alive: no response");
    if (resp.ttl() <= 0) {
      return absl::NotFoundError(absl::StrCat("etcd lease ", lease_id, " not found"));
    }
    return resp.ttl();
  }

  absl::Status RevokeLease(int64_t lease_id) override {
    etcdserverpb::LeaseRevokeRequest req;
    req.set_id(lease_id);
    etcdserverpb::LeaseRevokeResponse resp;
    grpc::Status last;
    absl::Status st = Call("lease revoke", [&](Endpoint& ep, grpc::ClientContext* ctx) {
      last = ep.lease->LeaseRevoke(ctx, req, &resp);
      return last;
    });
    if (!st.ok() && IsLeaseNotFound(last)) {
      return absl::NotFoundError(absl::StrCat("etcd lease ", lease_id, " not found"));
    }
    return st;
  }

  absl::StatusOr<std::unique_ptr<EtcdWatch>> WatchPrefix(std::string_view prefix,
                                                         int64_t start_revision) override {
    if (prefix.empty()) return absl::InvalidArgumentError("etcd watch: empty prefix");
    if (start_revision < 0) return absl::InvalidArgumentError("etcd watch: negative revision");
    if (start_revision == 0) {
      // "From now" is pinned to a revision before the watch exists: etcd creates a watch after
      // the request arrives, so a change made meanwhile (right after this returns) would be
      // missed. The revision comes from a count-only range, bounded by the per-call deadline
      // (a hung etcd fails it; waiting for the watch's own creation reply would not be bounded).
      auto now = CurrentRevision(prefix);
      if (!now.ok()) return now.status();
      start_revision = *now + 1;
    }
    absl::Status last = absl::UnavailableError("etcd watch: no endpoint");
    for (size_t attempt = 0; attempt < endpoints_.size(); ++attempt) {
      size_t idx = current_.load() % endpoints_.size();
      Endpoint& ep = endpoints_[idx];
      auto ctx = std::make_unique<grpc::ClientContext>();
      auto stream = ep.watch->Watch(ctx.get());
      etcdserverpb::WatchRequest req;
      etcdserverpb::WatchCreateRequest* create = req.mutable_create_request();
      create->set_key(std::string(prefix));
      create->set_range_end(PrefixRangeEnd(prefix));
      create->set_start_revision(start_revision);
      // Only the create request is sent here; its confirmation is read by Next(). Waiting for it
      // here could block without end on a hung etcd, out of reach of EtcdWatch::Cancel().
      if (stream->Write(req)) {
        return std::unique_ptr<EtcdWatch>(new GrpcEtcdWatch(std::move(ctx), std::move(stream)));
      }
      ctx->TryCancel();
      etcdserverpb::WatchResponse resp;
      while (stream->Read(&resp)) {
      }
      grpc::Status s = stream->Finish();
      last = s.ok() ? absl::UnavailableError("etcd watch: not created")
                    : absl::UnavailableError(FromGrpc(s, "watch").message());
      current_.compare_exchange_strong(idx, (idx + 1) % endpoints_.size());
    }
    return last;
  }

 private:
  absl::StatusOr<EtcdRangeResult> Range(std::string_view key, std::string_view range_end) {
    etcdserverpb::RangeRequest req;
    req.set_key(std::string(key));
    req.set_range_end(std::string(range_end));
    req.set_sort_order(etcdserverpb::RangeRequest::ASCEND);
    req.set_sort_target(etcdserverpb::RangeRequest::KEY);
    etcdserverpb::RangeResponse resp;
    absl::Status st = Call("range", [&](Endpoint& ep, grpc::ClientContext* ctx) {
      return ep.kv->Range(ctx, req, &resp);
    });
    if (!st.ok()) return st;
    EtcdRangeResult out;
    out.revision = resp.header().revision();
    out.kvs.reserve(resp.kvs_size());
    for (const mvccpb::KeyValue& kv : resp.kvs()) out.kvs.push_back(FromProto(kv));
    return out;
  }

  // The store's revision now (a count-only range over `prefix`: no values travel).
  absl::StatusOr<int64_t> CurrentRevision(std::string_view prefix) {
    etcdserverpb::RangeRequest req;
    req.set_key(std::string(prefix));
    req.set_range_end(PrefixRangeEnd(prefix));
    req.set_count_only(true);
    etcdserverpb::RangeResponse resp;
    absl::Status st = Call("range", [&](Endpoint& ep, grpc::ClientContext* ctx) {
      return ep.kv->Range(ctx, req, &resp);
    });
    if (!st.ok()) return st;
    return resp.header().revision();
  }

  absl::StatusOr<int64_t> DeleteRange(std::string_view key, std::string_view range_end) {
    etcdserverpb::DeleteRangeRequest req;
    req.set_key(std::string(key));
    req.set_range_end(std::string(range_end));
    etcdserverpb::DeleteRangeResponse resp;
    absl::Status st = Call("delete", [&](Endpoint& ep, grpc::ClientContext* ctx) {
      return ep.kv->DeleteRange(ctx, req, &resp);
    });
    if (!st.ok()) return st;
    return resp.deleted();
  }

  // Runs `fn` against the current endpoint, moving on to the next one while the failure is a
  // transport failure. Every attempt gets its own context and deadline.
  template <typename Fn>
  absl::Status Call(const char* what, Fn&& fn) {
    grpc::Status s;
    for (size_t attempt = 0; attempt < endpoints_.size(); ++attempt) {
      size_t idx = current_.load() % endpoints_.size();
      grpc::ClientContext ctx;
      // Wait (up to the deadline) for a connection instead of failing on a cached connect error:
      // a channel that saw etcd down would otherwise fail fast until its next backoff expires.
      ctx.set_wait_for_ready(true);
      ctx.set_deadline(std::chrono::system_clock::now() +
                       absl::ToChronoMilliseconds(options_.rpc_timeout));
      s = fn(endpoints_[idx], &ctx);
      if (!ShouldFailOver(s)) break;
      current_.compare_exchange_strong(idx, (idx + 1) % endpoints_.size());
    }
    return FromGrpc(s, what);
  }

  const EtcdOptions options_;
  std::vector<Endpoint> endpoints_;
  std::atomic<size_t> current_{0};
};

}  // namespace

std::string PrefixRangeEnd(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    unsigned char c = static_cast<unsigned char>(end.back());
    if (c < 0xff) {
      end.back() = static_cast<char>(c + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');  // every key: etcd reads "\0" as "to the end"
}

namespace {

// A PEM file for the TLS options; NotFound names the path, InvalidArgument an empty file.
absl::StatusOr<std::string> ReadPemFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("etcd: cannot read TLS file '", path, "'"));
  std::ostringstream text;
  text << in.rdbuf();
  if (text.str().find("-----BEGIN ") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("etcd: '", path, "' holds no PEM block"));
  }
  return text.str();
}

}  // namespace

absl::StatusOr<std::unique_ptr<EtcdClient>> EtcdClient::Create(const EtcdOptions& options) {
  if (options.endpoints.empty()) {
    return absl::InvalidArgumentError("etcd: no endpoints given");
  }
  if (options.rpc_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("etcd: rpc_timeout must be positive");
  }
  const bool have_cert = !options.tls_cert_file.empty();
  if (have_cert != !options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("etcd: tls_cert_file and tls_key_file go together");
  }
  const bool any_tls_file = have_cert || !options.tls_ca_file.empty();
  bool any_https = false;
  std::shared_ptr<grpc::ChannelCredentials> tls;  // built once, at the first https:// endpoint
  std::vector<Endpoint> endpoints;
  for (const std::string& raw : options.endpoints) {
    std::string ep = raw;
    const bool https = raw.rfind("https://", 0) == 0;
    for (std::string_view scheme : {"http://", "https://"}) {
      if (ep.rfind(scheme, 0) == 0) ep = ep.substr(scheme.size());
    }
    if (https && tls == nullptr) {
      grpc::SslCredentialsOptions ssl;
      for (auto [path, out] : {std::pair{&options.tls_ca_file, &ssl.pem_root_certs},
                               std::pair{&options.tls_cert_file, &ssl.pem_cert_chain},
                               std::pair{&options.tls_key_file, &ssl.pem_private_key}}) {
        if (path->empty()) continue;
        absl::StatusOr<std::string> pem = ReadPemFile(*path);
        if (!pem.ok()) return pem.status();
        *out = std::move(*pem);
      }
      tls = grpc::SslCredentials(ssl);
    }
    any_https = any_https || https;
    const size_t colon = ep.rfind(':');
    if (ep.empty() || colon == std::string::npos || colon == 0 || colon + 1 == ep.size() ||
        ep.find_first_not_of("0123456789", colon + 1) != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("etcd: endpoint must be host:port, got '", raw, "'"));
    }
    grpc::ChannelArguments args;
    const int max_backoff_ms =
        static_cast<int>(absl::ToInt64Milliseconds(options.max_reconnect_backoff));
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, std::min(100, max_backoff_ms));
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, max_backoff_ms);
    Endpoint e;
    e.channel =
        grpc::CreateCustomChannel(ep, https ? tls : grpc::InsecureChannelCredentials(), args);
    e.kv = etcdserverpb::KV::NewStub(e.channel);
    e.lease = etcdserverpb::Lease::NewStub(e.channel);
    e.watch = etcdserverpb::Watch::NewStub(e.channel);
    endpoints.push_back(std::move(e));
  }
  if (any_tls_file && !any_https) {
    return absl::InvalidArgumentError(
        "etcd: TLS files are set but no endpoint is https:// (name the endpoints https://...)");
  }
  return std::unique_ptr<EtcdClient>(new GrpcEtcdClient(options, std::move(endpoints)));
}

}  // namespace pagoda::cluster
