#include "pagoda/client/client.h"

#include <grpcpp/grpcpp.h>

#include <deque>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "local_path.h"
#include "pagoda.grpc.pb.h"
#include "remote_path.h"
#include "stream_path.h"
#include "ucx_path.h"

namespace pagoda {
namespace {

using client_internal::DataPath;
using client_internal::FromGrpc;
using client_internal::FromPageStatus;

constexpr size_t kMaxBatch = 4096;  // the server's batch limit; larger batches are split

// A fixed set of threads running queued tasks in order; the destructor drains the queue.
class TaskPool {
 public:
  explicit TaskPool(int threads) {
    for (int i = 0; i < std::max(1, threads); ++i) threads_.emplace_back([this] { Run(); });
  }
  ~TaskPool() {
    {
      absl::MutexLock l(&mu_);
      stop_ = true;
    }
    for (std::thread& t : threads_) t.join();
  }
  void Submit(std::function<void()> f) {
    absl::MutexLock l(&mu_);
    tasks_.push_back(std::move(f));
  }

 private:
  void Run() {
    while (true) {
      std::function<void()> f;
      {
        absl::MutexLock l(&mu_);
        mu_.Await(absl::Condition(
            +[](TaskPool* p)
                 ABSL_NO_THREAD_SAFETY_ANALYSIS { return p->stop_ || !p->tasks_.empty(); },
            this));
        if (tasks_.empty()) return;
        f = std::move(tasks_.front());
        tasks_.pop_front();
      }
      f();
    }
  }
  absl::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read '", path, "'"));
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void ToProto(absl::Span<const PageKey> keys, const std::string& tenant, v1::KeysRequest* req) {
  req->set_tenant(tenant);
  for (const PageKey& k : keys) {
    v1::PageKey* p = req->add_keys();
    p->set_hi(k.hi);
    p->set_lo(k.lo);
  }
}

class ClientImpl final : public Client {
 public:
  ClientImpl(const ClientOptions& o, std::shared_ptr<grpc::Channel> channel)
      : options_(o), channel_(std::move(channel)), stub_(v1::Pagoda::NewStub(channel_)) {}
  ~ClientImpl() override { pool_.reset(); }  // drain async work before the paths go away

  absl::Status Init() {
    pool_ = std::make_unique<TaskPool>(options_.async_threads);
    absl::StatusOr<ServiceHealth> h = Health();
    if (!h.ok()) {
      return absl::Status(
          h.status().code(),
          absl::StrCat("cannot reach pagodad at ", options_.target, ": ", h.status().message()));
    }
    if (h->arena_bytes > 0) window_bytes_ = h->arena_bytes / 4;
    for (const std::string& l : h->layouts) {
      LayoutId id = 0;
      if (absl::SimpleAtoi(l.substr(0, l.find(':')), &id)) layouts_.insert(id);
    }
    remote_ = std::make_unique<client_internal::RemotePath>(
        stub_.get(), options_.tenant, options_.chunk_bytes,
        [this](grpc::ClientContext* c) { Prepare(c); });
    if (options_.data_path == DataPathKind::kRemote) return UseRemote(*h);
    std::string socket = options_.local_socket.empty() ? h->local_socket : options_.local_socket;
    absl::Status local_status = absl::FailedPreconditionError("the server has no local path");
    if (!socket.empty()) {
      absl::StatusOr<std::unique_ptr<client_internal::LocalPath>> l =
          client_internal::LocalPath::Open(socket, options_.tenant, options_.token,
                                           options_.local_connections, options_.prefault_arena,
                                           h->instance_id, options_.timeout);
      if (l.ok()) {
        local_ = std::move(*l);
        path_ = local_.get();
        return absl::OkStatus();
      }
      local_status = l.status();
      // A refused token is an answer, not a reason to fall back.
      if (absl::IsUnauthenticated(local_status) || absl::IsPermissionDenied(local_status) ||
          absl::IsInvalidArgument(local_status)) {
        return local_status;
      }
    }
    if (options_.data_path == DataPathKind::kLocal) return local_status;
    return UseRemote(*h);
  }

  // Bytes over UCX when asked for and offered, else on the stream path when the server offers
  // it, else over gRPC.
  absl::Status UseRemote(const ServiceHealth& h) {
    path_ = remote_.get();
    auto prepare = [this](grpc::ClientContext* c) { Prepare(c); };
    if (options_.ucx) {
      absl::StatusOr<std::unique_ptr<client_internal::UcxPath>> u =
          client_internal::UcxPath::Open(stub_.get(), options_.tenant, prepare, options_.timeout);
      if (u.ok()) {
        ucx_ = std::move(*u);
        path_ = ucx_.get();
        return absl::OkStatus();
      }
      if (absl::IsUnauthenticated(u.status()) || absl::IsPermissionDenied(u.status())) {
        return u.status();
      }
    }
    // Never under TLS: the data connection is plain TCP.
    if (options_.remote_stream && h.data_port > 0 && options_.tls_ca.empty()) {
      absl::StatusOr<std::unique_ptr<client_internal::StreamPath>> sp =
          client_internal::StreamPath::Open(
              stub_.get(), options_.tenant, prepare,
              client_internal::StreamPath::TargetHost(options_.target), h.data_port, h.instance_id,
              options_.timeout);
      if (sp.ok()) {
        stream_ = std::move(*sp);
        path_ = stream_.get();
      }
      // Not reachable (a firewall, another host name): page bytes stay on gRPC.
    }
    return absl::OkStatus();
  }

  std::string data_path() const override { return path_->name(); }

  // A path reserves a whole batch before it commits any page of it, so a batch larger than the
  // host tier could never be stored. Batches therefore go out in windows of at most
  // window_bytes_ (a quarter of the host arena) and kMaxBatch pages: each window commits before the
  // next reserves, and the host tier demotes the committed windows to SSD as the request streams
  // through it. A malformed request goes out whole, so the server refuses all of it.
  std::vector<absl::Status> Put(absl::Span<const PutPage> pages) override {
    std::vector<absl::Status> out;
    out.reserve(pages.size());
    const bool windowed = WellFormed(pages);
    size_t i = 0;
    while (i < pages.size()) {
      size_t n = 0;
      uint64_t bytes = 0;
      while (i + n < pages.size() && n < kMaxBatch &&
             (!windowed || n == 0 || bytes + pages[i + n].bytes.size() <= window_bytes_)) {
        bytes += pages[i + n].bytes.size();
        ++n;
      }
      if (!windowed) n = pages.size() - i;  // one request: refused as a whole
      std::vector<absl::Status> part = path_->Put(pages.subspan(i, n));
      for (absl::Status& s : part) out.push_back(std::move(s));
      i += n;
    }
    return out;
  }

  // Whether a Put could be split without changing its outcome: every layout known to the server,
  // every page of its layout's size, no key twice.
  bool WellFormed(absl::Span<const PutPage> pages) const {
    absl::flat_hash_set<PageKey> keys;
    for (const PutPage& p : pages) {
      absl::StatusOr<PageLayout> l = PageLayout::FromId(p.layout);
      if (!l.ok() || !layouts_.contains(p.layout) || p.bytes.size() != l->PageBytes() ||
          !keys.insert(p.key).second) {
        return false;
      }
    }
    return true;
  }

  // Reads lease their pages in the host tier for the whole batch: windows of at most
  // window_bytes_ of output keep a read larger than the host tier possible (see Put).
  std::vector<GetResult> Get(absl::Span<const GetPage> pages) override {
    std::vector<GetResult> out;
    out.reserve(pages.size());
    for (size_t i = 0; i < pages.size();) {
      size_t n = 0;
      uint64_t bytes = 0;
      while (i + n < pages.size() && n < kMaxBatch &&
             (n == 0 || bytes + pages[i + n].out.size() <= window_bytes_)) {
        bytes += pages[i + n].out.size();
        ++n;
      }
      std::vector<GetResult> part = path_->Get(pages.subspan(i, n));
      i += n;
      for (GetResult& r : part) out.push_back(std::move(r));
    }
    return out;
  }

  absl::StatusOr<std::vector<bool>> Exists(absl::Span<const PageKey> keys) override {
    std::vector<bool> out;
    for (size_t i = 0; i < keys.size(); i += kMaxBatch) {
      v1::KeysRequest req;
      ToProto(keys.subspan(i, std::min(kMaxBatch, keys.size() - i)), options_.tenant, &req);
      v1::ExistsResponse resp;
      grpc::ClientContext ctx;
      Prepare(&ctx);
      absl::Status s = FromGrpc(stub_->Exists(&ctx, req, &resp));
      if (!s.ok()) return s;
      for (bool e : resp.exists()) out.push_back(e);
    }
    if (out.size() != keys.size()) return absl::InternalError("Exists: wrong answer count");
    return out;
  }

  absl::StatusOr<size_t> LongestPrefix(absl::Span<const PageKey> keys) override {
    size_t total = 0;
    for (size_t i = 0; i < keys.size(); i += kMaxBatch) {
      const size_t n = std::min(kMaxBatch, keys.size() - i);
      v1::KeysRequest req;
      ToProto(keys.subspan(i, n), options_.tenant, &req);
      v1::LongestPrefixResponse resp;
      grpc::ClientContext ctx;
      Prepare(&ctx);
      absl::Status s = FromGrpc(stub_->LongestPrefix(&ctx, req, &resp));
      if (!s.ok()) return s;
      total += resp.length();
      if (resp.length() < n) break;
    }
    return total;
  }

  template <typename Call>
  std::vector<absl::Status> PerKey(absl::Span<const PageKey> keys, Call call) {
    std::vector<absl::Status> out;
    for (size_t i = 0; i < keys.size(); i += kMaxBatch) {
      const size_t n = std::min(kMaxBatch, keys.size() - i);
      v1::KeysRequest req;
      ToProto(keys.subspan(i, n), options_.tenant, &req);
      v1::BatchResponse resp;
      grpc::ClientContext ctx;
      Prepare(&ctx);
      absl::Status s = FromGrpc(call(&ctx, req, &resp));
      if (s.ok() && resp.results_size() != static_cast<int>(n)) {
        s = absl::InternalError("wrong answer count");
      }
      for (size_t j = 0; j < n; ++j) {
        out.push_back(s.ok() ? FromPageStatus(resp.results(static_cast<int>(j))) : s);
      }
    }
    return out;
  }

  std::vector<absl::Status> Remove(absl::Span<const PageKey> keys) override {
    return PerKey(keys, [this](auto* c, const auto& q, auto* r) { return stub_->Remove(c, q, r); });
  }
  std::vector<absl::Status> Pin(absl::Span<const PageKey> keys) override {
    return PerKey(keys, [this](auto* c, const auto& q, auto* r) { return stub_->Pin(c, q, r); });
  }
  std::vector<absl::Status> Unpin(absl::Span<const PageKey> keys) override {
    return PerKey(keys, [this](auto* c, const auto& q, auto* r) { return stub_->Unpin(c, q, r); });
  }

  absl::StatusOr<size_t> Prefetch(absl::Span<const PageKey> keys,
                                  const std::string& tier) override {
    size_t moved = 0;
    for (size_t i = 0; i < keys.size(); i += kMaxBatch) {
      v1::PrefetchRequest req;
      req.set_tenant(options_.tenant);
      req.set_tier(tier);
      for (const PageKey& k : keys.subspan(i, std::min(kMaxBatch, keys.size() - i))) {
        v1::PageKey* p = req.add_keys();
        p->set_hi(k.hi);
        p->set_lo(k.lo);
      }
      v1::PrefetchResponse resp;
      grpc::ClientContext ctx;
      Prepare(&ctx);
      absl::Status s = FromGrpc(stub_->Prefetch(&ctx, req, &resp));
      if (!s.ok()) return s;
      moved += resp.moved();
    }
    return moved;
  }

  absl::StatusOr<ServiceStats> Stats() override {
    v1::StatsRequest req;
    req.set_tenant(options_.tenant);
    v1::StatsResponse r;
    grpc::ClientContext ctx;
    Prepare(&ctx);
    absl::Status s = FromGrpc(stub_->Stats(&ctx, req, &r));
    if (!s.ok()) return s;
    ServiceStats out;
    for (const v1::TierStats& t : r.tiers()) {
      out.tiers.push_back({t.name(), t.capacity_bytes(), t.used_bytes(), t.pages(), t.hits(),
                           t.promotions(), t.evictions()});
    }
    out.pages = r.pages();
    out.misses = r.misses();
    out.tenant_quota_bytes = r.tenant_quota_bytes();
    out.bytes_in = r.bytes_in();
    out.bytes_out = r.bytes_out();
    out.uptime_s = r.uptime_s();
    out.active_leases = r.active_leases();
    out.pinned_bytes = r.pinned_bytes();
    out.checksum_failures = r.checksum_failures();
    out.local_clients = r.local_clients();
    return out;
  }

  absl::StatusOr<ServiceHealth> Health() override {
    v1::HealthRequest req;
    v1::HealthResponse r;
    grpc::ClientContext ctx;
    Prepare(&ctx);
    absl::Status s = FromGrpc(stub_->Health(&ctx, req, &r));
    if (!s.ok()) return s;
    ServiceHealth h;
    h.serving = r.serving();
    h.version = r.version();
    h.local_socket = r.local_socket();
    h.instance_id = r.instance_id();
    h.arena_bytes = r.arena_bytes();
    h.http_port = static_cast<int>(r.http_port());
    h.data_port = static_cast<int>(r.data_port());
    for (const std::string& l : r.layouts()) h.layouts.push_back(l);
    return h;
  }

 protected:
  void Submit(std::function<void()> task) override { pool_->Submit(std::move(task)); }

 private:
  void Prepare(grpc::ClientContext* ctx) const {
    ctx->set_deadline(std::chrono::system_clock::now() +
                      absl::ToChronoNanoseconds(options_.timeout));
    if (!options_.token.empty()) ctx->AddMetadata("authorization", "Bearer " + options_.token);
  }

  const ClientOptions options_;
  uint64_t window_bytes_ = 64ULL << 20;    // bytes of one Put request (see Put)
  absl::flat_hash_set<LayoutId> layouts_;  // the server's layouts, from Health
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Pagoda::Stub> stub_;
  std::unique_ptr<client_internal::RemotePath> remote_;
  std::unique_ptr<client_internal::LocalPath> local_;
  std::unique_ptr<client_internal::UcxPath> ucx_;
  std::unique_ptr<client_internal::StreamPath> stream_;
  DataPath* path_ = nullptr;
  std::unique_ptr<TaskPool> pool_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  if (options.tenant.empty()) return absl::InvalidArgumentError("ClientOptions.tenant is empty");
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (!options.tls_ca.empty()) {
    grpc::SslCredentialsOptions ssl;
    absl::StatusOr<std::string> ca = ReadFile(options.tls_ca);
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *ca;
    if (!options.tls_cert.empty()) {
      absl::StatusOr<std::string> cert = ReadFile(options.tls_cert);
      absl::StatusOr<std::string> key = ReadFile(options.tls_key);
      if (!cert.ok()) return cert.status();
      if (!key.ok()) return key.status();
      ssl.pem_cert_chain = *cert;
      ssl.pem_private_key = *key;
    }
    creds = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  if (!options.tls_server_name.empty()) {
    args.SetSslTargetNameOverride(options.tls_server_name);
  }
  auto impl =
      std::make_unique<ClientImpl>(options, grpc::CreateCustomChannel(options.target, creds, args));
  if (absl::Status s = impl->Init(); !s.ok()) return s;
  return std::unique_ptr<Client>(std::move(impl));
}

// ---- Async forms (shared by every implementation) ---------------------------------------------

std::future<std::vector<absl::Status>> Client::PutAsync(std::vector<PutPage> pages) {
  auto p = std::make_shared<std::promise<std::vector<absl::Status>>>();
  auto f = p->get_future();
  PutAsync(std::move(pages), [p](std::vector<absl::Status> r) { p->set_value(std::move(r)); });
  return f;
}

std::future<std::vector<GetResult>> Client::GetAsync(std::vector<GetPage> pages) {
  auto p = std::make_shared<std::promise<std::vector<GetResult>>>();
  auto f = p->get_future();
  GetAsync(std::move(pages), [p](std::vector<GetResult> r) { p->set_value(std::move(r)); });
  return f;
}

void Client::PutAsync(std::vector<PutPage> pages,
                      std::function<void(std::vector<absl::Status>)> done) {
  Submit([this, pages = std::move(pages), done = std::move(done)] { done(Put(pages)); });
}

void Client::GetAsync(std::vector<GetPage> pages,
                      std::function<void(std::vector<GetResult>)> done) {
  Submit([this, pages = std::move(pages), done = std::move(done)] { done(Get(pages)); });
}

std::future<absl::StatusOr<std::vector<bool>>> Client::ExistsAsync(std::vector<PageKey> keys) {
  auto p = std::make_shared<std::promise<absl::StatusOr<std::vector<bool>>>>();
  auto f = p->get_future();
  Submit([this, p, keys = std::move(keys)] { p->set_value(Exists(keys)); });
  return f;
}

std::future<absl::StatusOr<size_t>> Client::LongestPrefixAsync(std::vector<PageKey> keys) {
  auto p = std::make_shared<std::promise<absl::StatusOr<size_t>>>();
  auto f = p->get_future();
  Submit([this, p, keys = std::move(keys)] { p->set_value(LongestPrefix(keys)); });
  return f;
}

}  // namespace pagoda
