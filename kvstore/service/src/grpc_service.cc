#include "grpc_service.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "call_watchdog.h"
#include "data_stream.h"
#include "pagoda/service/stream_wire.h"
#include "spdlog/spdlog.h"
#include "ucx_control.h"

namespace pagoda::service {
namespace {

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

void SetStatus(const absl::Status& s, v1::PageStatus* out) {
  out->set_code(static_cast<int32_t>(s.code()));
  if (!s.ok()) out->set_message(std::string(s.message()));
}

PageKey FromProto(const v1::PageKey& k) { return PageKey{k.hi(), k.lo()}; }

absl::Status CheckBatch(int n) {
  if (n < 1 || n > kMaxBatchPages) {
    return absl::InvalidArgumentError(
        absl::StrCat("a batch holds 1..", kMaxBatchPages, " pages, got ", n));
  }
  return absl::OkStatus();
}

absl::Status Cancelled(grpc::ServerContext* ctx) {
  if (!ctx->IsCancelled()) return absl::OkStatus();
  if (ctx->deadline() <= std::chrono::system_clock::now()) {
    return absl::DeadlineExceededError("deadline exceeded");
  }
  return absl::CancelledError("cancelled by the client");
}

// Times a handler and records it in the metrics.
// Also counts the call as in flight, so a graceful stop can wait for exactly these; a call that
// arrives once the service stopped serving is rejected (rejected() is true).
class Observe {
 public:
  Observe(ServiceMetrics* m, const char* method, std::atomic<int>* in_flight,
          const std::atomic<bool>* serving)
      : m_(m), method_(method), in_flight_(in_flight) {
    in_flight_->fetch_add(1);
    rejected_ = !serving->load();
  }
  ~Observe() { in_flight_->fetch_sub(1); }
  bool rejected() const { return rejected_; }
  grpc::Status Done(const absl::Status& s) {
    m_->ObserveRequest(
        method_, "grpc", s,
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
    return ToGrpc(s);
  }

 private:
  ServiceMetrics* m_;
  const char* method_;
  std::atomic<int>* in_flight_;
  bool rejected_ = false;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

}  // namespace

GrpcService::GrpcService(Store* store, const Authorizer* auth, ServiceMetrics* metrics,
                         const ServiceConfig& config, ServiceInfo info)
    : store_(store), auth_(auth), metrics_(metrics), config_(config), info_(std::move(info)) {}

absl::Status GrpcService::Authorize(grpc::ServerContext* ctx, const std::string& tenant) const {
  std::string_view token;
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  if (it != md.end()) {
    token = Authorizer::TokenFromHeader(std::string_view(it->second.data(), it->second.size()));
  }
  return auth_->Check(tenant, token);
}

// ---- Put ----------------------------------------------------------------------------------------

grpc::Status GrpcService::Put(grpc::ServerContext* ctx, grpc::ServerReader<v1::PutRequest>* reader,
                              v1::PutResponse* response) {
  Observe obs(metrics_, "Put", &in_flight_, &serving_);
  if (obs.rejected()) return obs.Done(absl::UnavailableError("pagodad is shutting down"));
  return obs.Done(PutImpl(ctx, reader, response));
}

absl::Status GrpcService::PutImpl(grpc::ServerContext* ctx,
                                  grpc::ServerReader<v1::PutRequest>* reader,
                                  v1::PutResponse* response) {
  v1::PutRequest msg;
  if (!reader->Read(&msg)) return absl::InvalidArgumentError("Put: empty stream");
  if (!msg.has_begin()) return absl::InvalidArgumentError("Put: the first message must be begin");
  const v1::PutBegin begin = std::move(*msg.mutable_begin());
  return PutBatch(
      ctx, begin,
      [&](std::vector<PutSlot>& slots) { return ReceiveChunks(ctx, begin, reader, slots); },
      response);
}

grpc::Status GrpcService::PutInline(grpc::ServerContext* ctx, const v1::PutBegin* request,
                                    v1::PutResponse* response) {
  Observe obs(metrics_, "PutInline", &in_flight_, &serving_);
  if (obs.rejected()) return obs.Done(absl::UnavailableError("pagodad is shutting down"));
  return obs.Done(PutBatch(
      ctx, *request,
      [&](std::vector<PutSlot>& slots) { return ReceiveChunks(ctx, *request, nullptr, slots); },
      response));
}

absl::Status GrpcService::ReceiveChunks(grpc::ServerContext* ctx, const v1::PutBegin& begin,
                                        grpc::ServerReader<v1::PutRequest>* reader,
                                        std::vector<PutSlot>& pages) {
  // What came inline first, then the chunks of the stream (none for PutInline). A stream that
  // stalls while holding the reservations is cancelled by the watchdog.
  CallWatchdog::Scope watch(watchdog_, ctx);
  const int n = begin.pages_size();
  uint8_t* const base = store_->HostArenaInfo().base;
  for (int i = 0; i < n; ++i) {
    const std::string& inline_data = begin.pages(i).data();
    PutSlot& p = pages[i];
    if (inline_data.empty() || !p.status.ok()) continue;
    if (inline_data.size() > p.size) {
      return absl::InvalidArgumentError(
          absl::StrCat("Put: page ", i, ": inline data longer than the page"));
    }
    memcpy(base + p.offset, inline_data.data(), inline_data.size());
    p.received = inline_data.size();
  }
  v1::PutRequest msg;
  while (reader != nullptr && reader->Read(&msg)) {
    watch.Touch();
    if (absl::Status s = Cancelled(ctx); !s.ok()) return s;
    if (!msg.has_chunk()) return absl::InvalidArgumentError("Put: a second begin message");
    const v1::PutChunk& c = msg.chunk();
    if (c.page_index() >= static_cast<uint32_t>(n)) {
      return absl::InvalidArgumentError(
          absl::StrCat("Put: chunk for page ", c.page_index(), " of a batch of ", n));
    }
    PutSlot& p = pages[c.page_index()];
    if (!p.status.ok()) continue;  // the client could not know the reserve failed
    if (c.offset() != p.received || c.data().size() > p.size - p.received) {
      return absl::InvalidArgumentError(
          absl::StrCat("Put: page ", c.page_index(), ": chunk [", c.offset(), ", +",
                       c.data().size(), ") is not the next range of a ", p.size, "-byte page"));
    }
    memcpy(base + p.offset + p.received, c.data().data(), c.data().size());
    p.received += c.data().size();
  }
  return Cancelled(ctx);
}

absl::Status GrpcService::PutBatch(
    grpc::ServerContext* ctx, const v1::PutBegin& begin,
    const std::function<absl::Status(std::vector<PutSlot>&)>& receive, v1::PutResponse* response,
    const char* path) {
  if (absl::Status s = Authorize(ctx, begin.tenant()); !s.ok()) return s;
  const int n = begin.pages_size();
  if (absl::Status s = CheckBatch(n); !s.ok()) return s;

  // 1. Validate the whole batch: a malformed batch reserves nothing.
  std::vector<PageLayout> layouts(n);
  absl::flat_hash_set<PageKey> seen;
  for (int i = 0; i < n; ++i) {
    const v1::PutPage& p = begin.pages(i);
    absl::StatusOr<PageLayout> l = PageLayout::FromId(p.layout_id());
    if (!l.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("Put: page ", i, ": unknown layout id ",
                                                     p.layout_id(), ": ", l.status().message()));
    }
    if (l->PageBytes() != p.size()) {
      return absl::InvalidArgumentError(absl::StrCat("Put: page ", i, ": size ", p.size(),
                                                     " does not match layout ", l->ToString(), " (",
                                                     l->PageBytes(), " bytes)"));
    }
    if (!seen.insert(FromProto(p.key())).second) {
      return absl::InvalidArgumentError(absl::StrCat("Put: page ", i, ": duplicate key"));
    }
    layouts[i] = *l;
  }

  // 2. Reserve (per page: a key already stored or a tenant over quota fails only that page).
  std::vector<PutSlot> pages(n);
  for (int i = 0; i < n; ++i) {
    absl::StatusOr<Reservation> r =
        store_->Reserve(begin.tenant(), FromProto(begin.pages(i).key()), layouts[i]);
    pages[i].status = r.status();
    pages[i].size = begin.pages(i).size();
    if (r.ok()) {
      pages[i].id = r->id;
      pages[i].offset = r->arena_offset;
    }
  }

  // 3. Receive the bytes straight into the reserved slots.
  if (absl::Status s = receive(pages); !s.ok()) {
    for (PutSlot& p : pages) {
      if (p.status.ok()) (void)store_->Abort(p.id);
    }
    return s;
  }

  // 4. Verify and commit each complete page; abort the rest.
  uint8_t* const base = store_->HostArenaInfo().base;
  uint64_t bytes = 0;
  for (int i = 0; i < n; ++i) {
    PutSlot& p = pages[i];
    if (p.status.ok()) {
      bytes += p.received;
      if (p.received != p.size) {
        (void)store_->Abort(p.id);
        p.status = absl::DataLossError(
            absl::StrCat("received ", p.received, " of ", p.size, " bytes; page aborted"));
      } else if ((p.checksummed ? p.checksum : PageChecksum(base + p.offset, p.size)) !=
                 (p.has_expected ? p.expected : begin.pages(i).checksum())) {
        (void)store_->Abort(p.id);
        p.status = absl::DataLossError("checksum mismatch; page aborted");
      } else {
        p.status = store_->Commit(p.id);
      }
    }
    SetStatus(p.status, response->add_results());
  }
  bytes_in_ += bytes;
  metrics_->AddBytesIn(path, bytes);
  return absl::OkStatus();
}

// ---- Get ----------------------------------------------------------------------------------------

grpc::Status GrpcService::Get(grpc::ServerContext* ctx, const v1::GetRequest* request,
                              grpc::ServerWriter<v1::GetResponse>* writer) {
  Observe obs(metrics_, "Get", &in_flight_, &serving_);
  if (obs.rejected()) return obs.Done(absl::UnavailableError("pagodad is shutting down"));
  return obs.Done(GetImpl(ctx, request, writer));
}

absl::Status GrpcService::GetImpl(grpc::ServerContext* ctx, const v1::GetRequest* request,
                                  grpc::ServerWriter<v1::GetResponse>* writer) {
  if (absl::Status s = Authorize(ctx, request->tenant()); !s.ok()) return s;
  if (absl::Status s = CheckBatch(request->keys_size()); !s.ok()) return s;
  uint64_t chunk = request->chunk_bytes() == 0 ? config_.get_chunk_bytes : request->chunk_bytes();
  chunk = std::min<uint64_t>(chunk, config_.max_message_bytes - 1024);
  const uint8_t* const base = store_->HostArenaInfo().base;
  uint64_t bytes = 0;
  v1::GetResponse msg;
  for (int i = 0; i < request->keys_size(); ++i) {
    if (absl::Status s = Cancelled(ctx); !s.ok()) return s;
    absl::StatusOr<ReadLease> lease =
        store_->AcquireRead(request->tenant(), FromProto(request->keys(i)));
    msg.Clear();
    v1::GetPageHeader* h = msg.mutable_header();
    h->set_index(i);
    SetStatus(lease.status(), h->mutable_status());
    if (!lease.ok()) {
      if (!writer->Write(msg)) return absl::CancelledError("Get: client went away");
      continue;
    }
    h->set_layout_id(lease->layout.Id());
    h->set_size(lease->size);
    h->set_checksum(lease->checksum);
    // Bytes go straight from the leased slot into the message; the reader verifies the checksum
    // (a lease that expired mid-copy shows up as a mismatch there, never as silent bad bytes).
    const uint8_t* page = base + lease->arena_offset;
    uint64_t off = std::min<uint64_t>(chunk, lease->size);
    h->set_data(page, off);
    bool ok = writer->Write(msg);
    while (ok && off < lease->size) {
      const uint64_t len = std::min<uint64_t>(chunk, lease->size - off);
      msg.Clear();
      v1::GetChunk* c = msg.mutable_chunk();
      c->set_index(i);
      c->set_offset(off);
      c->set_data(page + off, len);
      ok = writer->Write(msg);
      off += len;
    }
    (void)store_->ReleaseRead(lease->lease_id);
    if (!ok) return absl::CancelledError("Get: client went away");
    bytes += lease->size;
  }
  bytes_out_ += bytes;
  metrics_->AddBytesOut("grpc", bytes);
  return absl::OkStatus();
}

grpc::Status GrpcService::GetInline(grpc::ServerContext* ctx, const v1::GetRequest* request,
                                    v1::GetInlineResponse* response) {
  Observe obs(metrics_, "GetInline", &in_flight_, &serving_);
  if (obs.rejected()) return obs.Done(absl::UnavailableError("pagodad is shutting down"));
  absl::Status s = Authorize(ctx, request->tenant());
  if (s.ok()) s = CheckBatch(request->keys_size());
  if (!s.ok()) return obs.Done(s);
  const uint8_t* const base = store_->HostArenaInfo().base;
  const uint64_t cap = config_.max_message_bytes - 4096;
  uint64_t bytes = 0;
  for (int i = 0; i < request->keys_size(); ++i) {
    if (absl::Status c = Cancelled(ctx); !c.ok()) return obs.Done(c);
    absl::StatusOr<ReadLease> lease =
        store_->AcquireRead(request->tenant(), FromProto(request->keys(i)));
    v1::GetPageHeader* h = response->add_pages();
    h->set_index(i);
    if (lease.ok() && bytes + lease->size > cap) {
      (void)store_->ReleaseRead(lease->lease_id);
      return obs.Done(absl::ResourceExhaustedError(
          absl::StrCat("GetInline: the pages exceed one message (", cap, " bytes); use Get")));
    }
    SetStatus(lease.status(), h->mutable_status());
    if (!lease.ok()) continue;
    h->set_layout_id(lease->layout.Id());
    h->set_size(lease->size);
    h->set_checksum(lease->checksum);
    h->set_data(base + lease->arena_offset, lease->size);  // the reader verifies the checksum
    (void)store_->ReleaseRead(lease->lease_id);
    bytes += lease->size;
  }
  bytes_out_ += bytes;
  metrics_->AddBytesOut("grpc", bytes);
  return obs.Done(absl::OkStatus());
}

// ---- Small batched calls ------------------------------------------------------------------------

grpc::Status GrpcService::Exists(grpc::ServerContext* ctx, const v1::KeysRequest* request,
                                 v1::ExistsResponse* response) {
  Observe obs(metrics_, "Exists", &in_flight_, &serving_);
  if (obs.rejected()) return obs.Done(absl::UnavailableError("pagodad is shutting down"));
  absl::Status s = Authorize(ctx, request->tenant());
  if (s.ok()) s = CheckBatch(request->keys_size());
  if (!s.ok()) return obs.Done(s);
  for (const v1::PageKey& k : request->keys()) {
    response->add_exists(store_->Exists(request->tenant(), FromProto(k)));
  }
  return obs.Done(absl::OkStatus());
}

grpc::Status GrpcService::LongestPrefix(grpc::ServerContext* ctx, const v1::KeysRequest* request,
                                        v1::LongestPrefixResponse* response) {
  Observe obs(metrics_, "LongestPrefix", &in_flight_, &serving_);
  if (obs.rejected()) return obs.Done(absl::UnavailableError("pagodad is shutting down"));
  absl::Status s = Authorize(ctx, request->tenant());
  if (s.ok()) s = CheckBatch(request->keys_size());
  if (!s.ok()) return obs.Done(s);
  std::vector<PageKey> keys;
  keys.reserve(request->keys_size());
  for (const v1::PageKey& k : request->keys()) keys.push_back(FromProto(k));
  response->set_length(static_cast<uint32_t>(store_->LongestCachedPrefix(request->tenant(), keys)));
  return obs.Done(absl::OkStatus());
}

template <typename Fn>
absl::Status GrpcService::PerKey(grpc::ServerContext* ctx, const v1::KeysRequest* request,
                                 v1::BatchResponse* response, Fn fn) {
  absl::Status s = Authorize(ctx, request->tenant());
  if (s.ok()) s = CheckBatch(request->keys_size());
  if (!s.ok()) return s;
  for (const v1::PageKey& k : request->keys()) {
    if (absl::Status c = Cancelled(ctx); !c.ok()) return c;
    SetStatus(fn(request->tenant(), FromProto(k)), response->add_results());
  }
  return absl::OkStatus();
}

grpc::Status GrpcService::Remove(grpc::ServerContext* ctx, const v1::KeysRequest* request,
                                 v1::BatchResponse* response) {
  Observe obs(metrics_, "Remove", &in_flight_, &serving_);
  if (obs.rejected()) return obs.Done(absl::UnavailableError("pagodad is shutting down"));
  return obs.Done(PerKey(ctx, request, response, [this](const std::string& t, const PageKey& k) {
    return store_->Remove(t, k);
  }));
}

grpc::Status GrpcService::Pin(grpc::ServerContext* ctx, const v1::KeysRequest* request,
                              v1::BatchResponse* response) {
  Observe obs(metrics_, "Pin", &in_flight_, &serving_);
  if (obs.rejected()) return obs.Done(absl::UnavailableError("pagodad is shutting down"));
  return obs.Done(PerKey(ctx, request, response, [this](const std::string& t, const PageKey& k) {
    return store_->Pin(t, k);
  }));
}

grpc::Status GrpcService::Unpin(grpc::ServerContext* ctx, const v1::KeysRequest* request,
                                v1::BatchResponse* response) {
  Observe obs(metrics_, "Unpin", &in_flight_, &serving_);
  if (obs.rejected()) return obs.Done(absl::UnavailableError("pagodad is shutting down"));
  return obs.Done(PerKey(ctx, request, response, [this](const std::string& t, const PageKey& k) {
    return store_->Unpin(t, k);
  }));
}

grpc::Status GrpcService::Prefetch(grpc::ServerContext* ctx, const v1::PrefetchRequest* request,
                                   v1::PrefetchResponse* response) {
  Observe obs(metrics_, "Prefetch", &in_flight_, &serving_);
  if (obs.rejected()) return obs.Done(absl::UnavailableError("pagodad is shutting down"));
  absl::Status s = Authorize(ctx, request->tenant());
  if (s.ok()) s = CheckBatch(request->keys_size());
  Tier tier = Tier::kHost;
  if (s.ok() && !request->tier().empty() && request->tier() != "host") {
    if (request->tier() == "gpu") {
      tier = Tier::kGpu;
      if (!store_->HasTier(Tier::kGpu)) s = absl::FailedPreconditionError("no GPU tier");
    } else {
      s = absl::InvalidArgumentError(
          absl::StrCat("Prefetch: tier must be host or gpu, got '", request->tier(), "'"));
    }
  }
  if (!s.ok()) return obs.Done(s);
  std::vector<PageKey> keys;
  for (const v1::PageKey& k : request->keys()) keys.push_back(FromProto(k));
  absl::StatusOr<size_t> moved = store_->Prefetch(request->tenant(), keys, tier);
  if (moved.ok()) response->set_moved(static_cast<uint32_t>(*moved));
  return obs.Done(moved.status());
}

grpc::Status GrpcService::Stats(grpc::ServerContext* ctx, const v1::StatsRequest* request,
                                v1::StatsResponse* response) {
  Observe obs(metrics_, "Stats", &in_flight_, &serving_);
  if (obs.rejected()) return obs.Done(absl::UnavailableError("pagodad is shutting down"));
  if (absl::Status s = Authorize(ctx, request->tenant()); !s.ok()) return obs.Done(s);
  StoreStats st = store_->Stats();
  for (int t = 0; t < kNumTiers; ++t) {
    const TierStats& ts = st.tiers[t];
    if (!ts.present) continue;
    v1::TierStats* out = response->add_tiers();
    out->set_name(std::string(TierName(static_cast<Tier>(t))));
    out->set_capacity_bytes(ts.capacity_bytes);
    out->set_used_bytes(ts.used_bytes);
    out->set_pages(ts.pages);
    out->set_hits(ts.hits);
    out->set_promotions(ts.promotions);
    out->set_evictions(ts.evictions);
  }
  response->set_pages(st.pages);
  response->set_misses(st.misses);
  auto it = config_.tenants.find(request->tenant());
  response->set_tenant_quota_bytes(it == config_.tenants.end() ? 0 : it->second.quota_bytes);
  response->set_bytes_in(bytes_in_.load());
  response->set_bytes_out(bytes_out_.load());
  response->set_uptime_s(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count());
  response->set_active_leases(st.active_leases);
  response->set_pinned_bytes(st.pinned_bytes);
  response->set_checksum_failures(st.checksum_failures);
  response->set_local_clients(local_clients_ ? static_cast<uint64_t>(local_clients_()) : 0);
  return obs.Done(absl::OkStatus());
}

grpc::Status GrpcService::Health(grpc::ServerContext* ctx, const v1::HealthRequest* request,
                                 v1::HealthResponse* response) {
  // No tenant: health is for load balancers and operators.
  response->set_serving(serving_.load());
  response->set_version("pagodad 0.1.0");
  response->set_local_socket(info_.local_socket);
  response->set_instance_id(info_.instance_id);
  response->set_arena_bytes(store_->HostArenaInfo().size);
  response->set_http_port(info_.http_port < 0 ? 0 : static_cast<uint32_t>(info_.http_port));
  response->set_data_port(stream_ != nullptr ? static_cast<uint32_t>(stream_->port()) : 0);
  for (const LayoutConfig& l : config_.layouts) {
    PageLayout pl{l.dtype == "bf16" ? DType::kBf16 : DType::kFp16, l.kv_heads, l.head_dim,
                  l.page_tokens};
    response->add_layouts(absl::StrCat(pl.Id(), ":", pl.ToString()));
  }
  return grpc::Status::OK;
}

// ---- Stream data path: control here, bytes on the claimed TCP connection (data_stream.h) ------

grpc::Status GrpcService::StreamGet(grpc::ServerContext* ctx, const v1::StreamGetRequest* request,
                                    v1::BatchResponse* response) {
  Observe obs(metrics_, "StreamGet", &in_flight_, &serving_);
  if (obs.rejected()) return obs.Done(absl::UnavailableError("pagodad is shutting down"));
  return obs.Done(StreamGetImpl(ctx, *request, response));
}

absl::Status GrpcService::StreamGetImpl(grpc::ServerContext* ctx,
                                        const v1::StreamGetRequest& request,
                                        v1::BatchResponse* response) {
  if (absl::Status s = Authorize(ctx, request.tenant()); !s.ok()) return s;
  if (stream_ == nullptr) {
    return absl::FailedPreconditionError("this pagodad serves no stream data path");
  }
  const int n = request.keys_size();
  if (absl::Status s = CheckBatch(n); !s.ok()) return s;
  if (request.capacity_size() != n) {
    return absl::InvalidArgumentError("StreamGet: one capacity per key is required");
  }
  absl::StatusOr<std::unique_ptr<DataStreamServer::Claim>> claim =
      stream_->Acquire(request.ticket(), request.tenant());
  if (!claim.ok()) return claim.status();
  // Pages go out in runs of about kRunBytes: lease a run (a lease keeps its slot from being reused
  // while its bytes are sent; one that runs out anyway shows up as a checksum mismatch at the
  // reader, never as silent bytes), send each page's header and bytes, release the run. Only one
  // run is leased at a time, so a batch larger than the host tier still streams from SSD.
  stream::StreamFrameHeader frame;
  frame.count = static_cast<uint32_t>(n);
  frame.seq = request.seq();
  std::vector<stream::StreamPageHeader> headers(n);
  const int fd = (*claim)->fd();
  const iovec head{&frame, sizeof(frame)};
  absl::Status sent = stream::WriteAllV(fd, {&head, 1});
  const uint8_t* const base = store_->HostArenaInfo().base;
  uint64_t bytes_out = 0;
  std::vector<uint64_t> leases;
  std::vector<iovec> iov;
  for (int i = 0; i < n && sent.ok();) {
    leases.clear();
    iov.clear();
    uint64_t run_bytes = 0;
    for (; i < n && (iov.empty() || run_bytes < stream::kRunBytes); ++i) {
      absl::StatusOr<ReadLease> lease =
          store_->AcquireRead(request.tenant(), FromProto(request.keys(i)), absl::Seconds(30));
      absl::Status s = lease.status();
      if (s.ok()) {
        leases.push_back(lease->lease_id);
        if (lease->size > request.capacity(i)) {
          s = absl::InvalidArgumentError(absl::StrCat("StreamGet: page ", i, " has ", lease->size,
                                                      " bytes; the buffer holds ",
                                                      request.capacity(i)));
        }
      }
      SetStatus(s, response->add_results());
      headers[i].code = static_cast<int32_t>(s.code());
      iov.push_back({&headers[i], sizeof(headers[i])});
      if (!s.ok()) continue;
      headers[i].layout_id = lease->layout.Id();
      headers[i].size = lease->size;
      headers[i].checksum = lease->checksum;
      iov.push_back({const_cast<uint8_t*>(base + lease->arena_offset), lease->size});
      run_bytes += lease->size;
    }
    sent = stream::WriteAllV(fd, iov);
    for (uint64_t id : leases) (void)store_->ReleaseRead(id);
    bytes_out += run_bytes;
  }
  if (!sent.ok()) {
    (*claim)->Fail();
    return sent;
  }
  bytes_out_ += bytes_out;
  metrics_->AddBytesOut("stream", bytes_out);
  return absl::OkStatus();
}

grpc::Status GrpcService::StreamPut(grpc::ServerContext* ctx, const v1::StreamPutRequest* request,
                                    v1::PutResponse* response) {
  Observe obs(metrics_, "StreamPut", &in_flight_, &serving_);
  if (obs.rejected()) return obs.Done(absl::UnavailableError("pagodad is shutting down"));
  return obs.Done(StreamPutImpl(ctx, *request, response));
}

absl::Status GrpcService::StreamPutImpl(grpc::ServerContext* ctx,
                                        const v1::StreamPutRequest& request,
                                        v1::PutResponse* response) {
  const v1::PutBegin& begin = request.begin();
  if (absl::Status s = Authorize(ctx, begin.tenant()); !s.ok()) return s;
  if (stream_ == nullptr) {
    return absl::FailedPreconditionError("this pagodad serves no stream data path");
  }
  absl::StatusOr<std::unique_ptr<DataStreamServer::Claim>> claim =
      stream_->Acquire(request.ticket(), begin.tenant());
  if (!claim.ok()) return claim.status();
  const int fd = (*claim)->fd();
  for (const v1::PutPage& p : begin.pages()) {
    if (!p.data().empty()) {
      (*claim)->Fail();
      return absl::InvalidArgumentError("StreamPut: page bytes go on the data connection");
    }
  }
  absl::Status s = PutBatch(
      ctx, begin,
      [&](std::vector<PutSlot>& pages) -> absl::Status {
        stream::StreamFrameHeader frame;
        if (absl::Status r = stream::ReadAll(fd, &frame, sizeof(frame)); !r.ok()) return r;
        uint64_t total = 0;
        for (const PutSlot& p : pages) total += p.size;
        if (frame.magic != stream::kFrameMagic || frame.seq != request.seq() ||
            frame.count != pages.size() || frame.payload_bytes != total) {
          return absl::InvalidArgumentError(
              "StreamPut: the data frame does not match the call (seq, count or size)");
        }
        uint8_t* const base = store_->HostArenaInfo().base;
        // Straight into the reserved slots, a run of pages per call, each run checksummed while
        // in cache; bytes of a page that could not be reserved are drained so the stream stays
        // in step.
        size_t i = 0;
        while (i < pages.size()) {
          if (!pages[i].status.ok()) {
            if (absl::Status r = stream::Discard(fd, pages[i].size); !r.ok()) return r;
            ++i;
            continue;
          }
          std::vector<iovec> run;
          size_t end = i, bytes = 0;
          while (end < pages.size() && pages[end].status.ok() &&
                 (run.empty() || bytes + pages[end].size <= stream::kRunBytes)) {
            run.push_back({base + pages[end].offset, pages[end].size});
            bytes += pages[end].size;
            ++end;
          }
          if (absl::Status r = stream::ReadAllV(fd, run); !r.ok()) return r;
          for (; i < end; ++i) {
            PutSlot& p = pages[i];
            p.received = p.size;
            p.checksum = PageChecksum(base + p.offset, p.size);
            p.checksummed = true;
          }
        }
        // The trailer: each page's checksum, computed by the client as it sent the page.
        std::vector<uint64_t> sums(pages.size());
        if (absl::Status r = stream::ReadAll(fd, sums.data(), sums.size() * sizeof(uint64_t));
            !r.ok()) {
          return r;
        }
        for (size_t i = 0; i < pages.size(); ++i) {
          pages[i].has_expected = true;
          pages[i].expected = sums[i];
        }
        return Cancelled(ctx);
      },
      response, "stream");
  // A batch refused before or while its frame was read leaves the stream out of step.
  if (!s.ok()) (*claim)->Fail();
  return s;
}

// ---- UCX data path: control only (see ucx_control.h)
// ---------------------------------------------

#define PAGODA_UCX_HANDLER(Method, Request, Response, call)                                  \
  grpc::Status GrpcService::Method(grpc::ServerContext* ctx, const Request* request,         \
                                   Response* response) {                                     \
    Observe obs(metrics_, #Method, &in_flight_, &serving_);                                  \
    if (obs.rejected()) return obs.Done(absl::UnavailableError("pagodad is shutting down")); \
    absl::Status s = Authorize(ctx, request->tenant());                                      \
    if (s.ok() && ucx_ == nullptr) {                                                         \
      s = absl::FailedPreconditionError("this pagodad serves no UCX data path");             \
    }                                                                                        \
    if (s.ok()) s = call;                                                                    \
    return obs.Done(s);                                                                      \
  }

PAGODA_UCX_HANDLER(UcxHello, v1::UcxHelloRequest, v1::UcxHelloResponse,
                   ucx_->Hello(request->tenant(), response))
PAGODA_UCX_HANDLER(UcxAcquire, v1::UcxAcquireRequest, v1::UcxAcquireResponse,
                   ucx_->Acquire(*request, response))
PAGODA_UCX_HANDLER(UcxRelease, v1::UcxReleaseRequest, v1::BatchResponse,
                   ucx_->Release(*request, response))
PAGODA_UCX_HANDLER(UcxReserve, v1::PutBegin, v1::UcxReserveResponse,
                   ucx_->Reserve(*request, response))
PAGODA_UCX_HANDLER(UcxCommit, v1::UcxCommitRequest, v1::PutResponse,
                   ucx_->Commit(*request, response))

#undef PAGODA_UCX_HANDLER

}  // namespace pagoda::service
