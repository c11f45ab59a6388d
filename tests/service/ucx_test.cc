// pagodad's UCX data path (issue 6) against a real pagodad process on 127.0.0.1: page bytes move
// by one-sided UCX reads/writes of the server's arena, gRPC carries only control. Byte-exact
// round trips, damaged slots and writes never yield or publish wrong bytes, expired leases, and
// a server without UCX (the client falls back to gRPC bytes).
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>

#include "absl/strings/str_replace.h"
#include "pagoda.grpc.pb.h"
#include "pagoda/transport/remote_key.h"
#include "pagoda/transport/transport.h"
#include "pagodad_process.h"

namespace pagoda::testing {
namespace {

std::unique_ptr<PagodadProcess> StartServer(PagodadProcess::Options o = {}) {
  // The UCX path is off by default (it trusts every peer that reaches it): these tests turn it on.
  if (std::find(o.extra_args.begin(), o.extra_args.end(), "--ucx") == o.extra_args.end()) {
    o.extra_args.insert(o.extra_args.end(), {"--ucx", "true"});
  }
  absl::StatusOr<std::unique_ptr<PagodadProcess>> p = PagodadProcess::Start(o);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? std::move(*p) : nullptr;
}

std::unique_ptr<Client> UcxClient(const PagodadProcess& server, const std::string& tenant) {
  ClientOptions o = server.ClientOpts(tenant, DataPathKind::kRemote);
  o.ucx = true;
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(*c) : nullptr;
}

// A raw view of the UCX control calls plus a UCX connection to the server's arena, to do what a
// buggy or hostile client could: write wrong bytes, read after a lease ran out.
class RawUcx {
 public:
  explicit RawUcx(const PagodadProcess& server)
      : stub_(v1::Pagoda::NewStub(
            grpc::CreateChannel(server.target(), grpc::InsecureChannelCredentials()))) {}

  absl::Status Open() {
    grpc::ClientContext ctx;
    v1::UcxHelloRequest req;
    req.set_tenant("t");
    v1::UcxHelloResponse resp;
    grpc::Status g = stub_->UcxHello(&ctx, req, &resp);
    if (!g.ok())
      return absl::Status(static_cast<absl::StatusCode>(g.error_code()), g.error_message());
    absl::StatusOr<std::unique_ptr<Transport>> t = Transport::Create();
    if (!t.ok()) return t.status();
    transport_ = std::move(*t);
    absl::StatusOr<std::string> addr = DecodePeerAddress(resp.worker_address());
    if (!addr.ok()) return addr.status();
    absl::StatusOr<std::unique_ptr<TransportEndpoint>> ep = transport_->Connect(*addr);
    if (!ep.ok()) return ep.status();
    endpoint_ = std::move(*ep);
    absl::StatusOr<std::unique_ptr<RemoteMemory>> arena =
        endpoint_->ImportRemoteKey(resp.arena_key());
    if (!arena.ok()) return arena.status();
    arena_ = std::move(*arena);
    return absl::OkStatus();
  }
  absl::Status Move(TransferDirection d, void* local, uint64_t offset, uint64_t len) {
    TransferOp op{local, offset, len};
    absl::StatusOr<TransferFuture> f = endpoint_->Post(d, *arena_, {&op, 1});
    if (!f.ok()) return f.status();
    return f->WaitAll();
  }
  v1::Pagoda::Stub* stub() { return stub_.get(); }
  ~RawUcx() {
    arena_.reset();
    endpoint_.reset();
  }

 private:
  std::unique_ptr<v1::Pagoda::Stub> stub_;
  std::unique_ptr<Transport> transport_;
  std::unique_ptr<TransportEndpoint> endpoint_;
  std::unique_ptr<RemoteMemory> arena_;
};

v1::UcxLease AcquireOne(v1::Pagoda::Stub* stub, const std::string& tenant, PageKey key,
                        uint32_t lease_ms = 0) {
  grpc::ClientContext ctx;
  v1::UcxAcquireRequest req;
  req.set_tenant(tenant);
  req.add_keys()->set_hi(key.hi);
  req.mutable_keys(0)->set_lo(key.lo);
  req.set_lease_ms(lease_ms);
  v1::UcxAcquireResponse resp;
  EXPECT_TRUE(stub->UcxAcquire(&ctx, req, &resp).ok());
  EXPECT_EQ(resp.leases_size(), 1);
  return resp.leases_size() == 1 ? resp.leases(0) : v1::UcxLease();
}

int ReleaseOne(v1::Pagoda::Stub* stub, const std::string& tenant, uint64_t lease) {
  grpc::ClientContext ctx;
  v1::UcxReleaseRequest req;
  req.set_tenant(tenant);
  req.add_leases(lease);
  v1::BatchResponse resp;
  EXPECT_TRUE(stub->UcxRelease(&ctx, req, &resp).ok());
  return resp.results_size() == 1 ? resp.results(0).code() : -1;
}

TEST(UcxPathTest, PutGetByteExactAcrossLayoutsAndPaths) {
  std::unique_ptr<PagodadProcess> server = StartServer();
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Client> ucx = UcxClient(*server, "tenant-u");
  ASSERT_NE(ucx, nullptr);
  EXPECT_EQ(ucx->data_path(), "ucx");
  const PageLayout layouts[] = {SmallLayout(), PageLayout{DType::kFp16, 8, 128, 16}, LargeLayout()};
  std::vector<std::vector<uint8_t>> data;
  std::vector<PutPage> puts;
  for (int i = 0; i < 12; ++i) {
    const PageLayout& l = layouts[i % 3];
    PageKey k{7, static_cast<uint64_t>(i)};
    data.push_back(PageBytes(k, l.PageBytes(), 3));
  }
  for (int i = 0; i < 12; ++i)
    puts.push_back({PageKey{7, uint64_t(i)}, layouts[i % 3].Id(), data[i]});
  for (const absl::Status& s : ucx->Put(puts)) ASSERT_TRUE(s.ok()) << s;

  // Read back over UCX in one batch with a missing key and a too-small buffer in it.
  std::vector<std::vector<uint8_t>> out(14);
  std::vector<GetPage> gets;
  for (int i = 0; i < 12; ++i) {
    out[i].assign(layouts[i % 3].PageBytes(), 0xEE);
    gets.push_back({PageKey{7, uint64_t(i)}, absl::MakeSpan(out[i])});
  }
  out[12].resize(512);
  gets.push_back({PageKey{99, 99}, absl::MakeSpan(out[12])});
  out[13].resize(16);
  gets.push_back({PageKey{7, 0}, absl::MakeSpan(out[13])});
  std::vector<GetResult> got = ucx->Get(gets);
  ASSERT_EQ(got.size(), 14u);
  for (int i = 0; i < 12; ++i) {
    ASSERT_TRUE(got[i].status.ok()) << i << ": " << got[i].status;
    EXPECT_EQ(got[i].size, data[i].size());
    EXPECT_EQ(got[i].layout, layouts[i % 3].Id());
    EXPECT_EQ(out[i], data[i]) << "page " << i;
  }
  EXPECT_TRUE(absl::IsNotFound(got[12].status)) << got[12].status;
  EXPECT_TRUE(absl::IsInvalidArgument(got[13].status)) << got[13].status;

  // Pages written over UCX read the same over gRPC bytes, and the other way round.
  ClientOptions grpc_opts = server->ClientOpts("tenant-u", DataPathKind::kRemote);
  grpc_opts.remote_stream = false;
  absl::StatusOr<std::unique_ptr<Client>> grpc_client = Client::Connect(grpc_opts);
  ASSERT_TRUE(grpc_client.ok());
  EXPECT_EQ((*grpc_client)->data_path(), "remote");
  std::vector<uint8_t> via_grpc(LargeLayout().PageBytes());
  GetResult r = (*grpc_client)->Get({{PageKey{7, 2}, absl::MakeSpan(via_grpc)}})[0];
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(via_grpc, data[2]);
  std::vector<uint8_t> g = PageBytes(PageKey{8, 1}, LargeLayout().PageBytes(), 5);
  ASSERT_TRUE((*grpc_client)->Put({{PageKey{8, 1}, LargeLayout().Id(), g}})[0].ok());
  std::vector<uint8_t> back(g.size());
  r = ucx->Get({{PageKey{8, 1}, absl::MakeSpan(back)}})[0];
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(back, g);

  // Tenants stay apart on this path too.
  std::unique_ptr<Client> other = UcxClient(*server, "tenant-other");
  ASSERT_NE(other, nullptr);
  r = other->Get({{PageKey{7, 0}, absl::MakeSpan(out[0])}})[0];
  EXPECT_TRUE(absl::IsNotFound(r.status)) << r.status;
}

// A slot whose bytes changed under a lease (here: overwritten through UCX) is never served.
TEST(UcxPathTest, DamagedSlotIsDataLossNeverWrongBytes) {
  std::unique_ptr<PagodadProcess> server = StartServer();
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Client> ucx = UcxClient(*server, "t");
  ASSERT_NE(ucx, nullptr);
  const PageLayout l = SmallLayout();
  const PageKey k{1, 1};
  std::vector<uint8_t> data = PageBytes(k, l.PageBytes());
  ASSERT_TRUE(ucx->Put({{k, l.Id(), data}})[0].ok());

  RawUcx raw(*server);
  ASSERT_TRUE(raw.Open().ok());
  v1::UcxLease lease = AcquireOne(raw.stub(), "t", k);
  ASSERT_EQ(lease.status().code(), 0);
  ASSERT_EQ(lease.size(), data.size());
  std::vector<uint8_t> bad = data;
  bad[100] ^= 0x5A;
  ASSERT_TRUE(raw.Move(TransferDirection::kWrite, bad.data(), lease.offset(), bad.size()).ok());
  EXPECT_EQ(ReleaseOne(raw.stub(), "t", lease.lease()), 0);

  std::vector<uint8_t> out(data.size(), 0);
  GetResult r = ucx->Get({{k, absl::MakeSpan(out)}})[0];
  EXPECT_TRUE(absl::IsDataLoss(r.status)) << r.status;
  EXPECT_EQ(r.size, 0u);
}

// Bytes that do not match the checksum given at reserve time are never published; malformed
// reserve batches reserve nothing; handles are bound to their tenant.
TEST(UcxPathTest, WrongOrMissingWriteIsAbortedNotPublished) {
  std::unique_ptr<PagodadProcess> server = StartServer();
  ASSERT_NE(server, nullptr);
  RawUcx raw(*server);
  ASSERT_TRUE(raw.Open().ok());
  const PageLayout l = SmallLayout();
  auto reserve = [&](const std::vector<PageKey>& keys, const std::vector<uint64_t>& sums,
                     grpc::Status* status) {
    grpc::ClientContext ctx;
    v1::PutBegin b;
    b.set_tenant("t");
    for (size_t i = 0; i < keys.size(); ++i) {
      v1::PutPage* p = b.add_pages();
      p->mutable_key()->set_hi(keys[i].hi);
      p->mutable_key()->set_lo(keys[i].lo);
      p->set_layout_id(l.Id());
      p->set_size(l.PageBytes());
      p->set_checksum(sums[i]);
    }
    v1::UcxReserveResponse resp;
    *status = raw.stub()->UcxReserve(&ctx, b, &resp);
    return resp;
  };
  auto commit = [&](const std::string& tenant, std::vector<uint64_t> handles,
                    std::vector<uint64_t> aborts = {}) {
    grpc::ClientContext ctx;
    v1::UcxCommitRequest c;
    c.set_tenant(tenant);
    for (uint64_t h : handles) c.add_commit(h);
    for (uint64_t h : aborts) c.add_abort(h);
    v1::PutResponse resp;
    EXPECT_TRUE(raw.stub()->UcxCommit(&ctx, c, &resp).ok());
    std::vector<int> codes;
    for (const auto& s : resp.results()) codes.push_back(s.code());
    return codes;
  };
  const PageKey a{2, 1}, b{2, 2}, c{2, 3};
  std::vector<uint8_t> da = PageBytes(a, l.PageBytes()), db = PageBytes(b, l.PageBytes()),
                       dc = PageBytes(c, l.PageBytes());
  grpc::Status gs;
  v1::UcxReserveResponse slots =
      reserve({a, b, c},
              {PageChecksum(da.data(), da.size()), PageChecksum(db.data(), db.size()),
               PageChecksum(dc.data(), dc.size())},
              &gs);
  ASSERT_TRUE(gs.ok()) << gs.error_message();
  ASSERT_EQ(slots.slots_size(), 3);
  // a: written right; b: written with a flipped byte; c: never written.
  ASSERT_TRUE(
      raw.Move(TransferDirection::kWrite, da.data(), slots.slots(0).offset(), da.size()).ok());
  std::vector<uint8_t> bad = db;
  bad[7] ^= 1;
  ASSERT_TRUE(
      raw.Move(TransferDirection::kWrite, bad.data(), slots.slots(1).offset(), bad.size()).ok());
  // Another tenant cannot commit them.
  EXPECT_EQ(commit("intruder", {slots.slots(0).handle()}),
            std::vector<int>{static_cast<int>(absl::StatusCode::kNotFound)});
  EXPECT_EQ(
      commit("t", {slots.slots(0).handle(), slots.slots(1).handle(), slots.slots(2).handle()}),
      (std::vector<int>{0, static_cast<int>(absl::StatusCode::kDataLoss),
                        static_cast<int>(absl::StatusCode::kDataLoss)}));
  // A handle is used once.
  EXPECT_EQ(commit("t", {slots.slots(0).handle()}),
            std::vector<int>{static_cast<int>(absl::StatusCode::kNotFound)});
  std::unique_ptr<Client> ucx = UcxClient(*server, "t");
  ASSERT_NE(ucx, nullptr);
  absl::StatusOr<std::vector<bool>> ex = ucx->Exists(std::vector<PageKey>{a, b, c});
  ASSERT_TRUE(ex.ok());
  EXPECT_EQ(*ex, (std::vector<bool>{true, false, false}));
  // b and c were aborted: writable again.
  EXPECT_TRUE(ucx->Put({{b, l.Id(), db}, {c, l.Id(), dc}})[0].ok());

  // Malformed batches: bytes inline, unknown layout, duplicate key -> nothing reserved.
  const PageKey d{2, 4};
  for (int variant = 0; variant < 3; ++variant) {
    grpc::ClientContext ctx;
    v1::PutBegin begin;
    begin.set_tenant("t");
    v1::PutPage* p = begin.add_pages();
    p->mutable_key()->set_hi(d.hi);
    p->mutable_key()->set_lo(d.lo);
    p->set_layout_id(variant == 1 ? 0xFFFFu : l.Id());
    p->set_size(l.PageBytes());
    if (variant == 0) p->set_data("xx");
    if (variant == 2) *begin.add_pages() = *p;
    v1::UcxReserveResponse resp;
    grpc::Status st = raw.stub()->UcxReserve(&ctx, begin, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << variant;
    EXPECT_EQ(resp.slots_size(), 0);
  }
  // d is still free to write (nothing was reserved).
  std::vector<uint8_t> dd = PageBytes(d, l.PageBytes());
  EXPECT_TRUE(ucx->Put({{d, l.Id(), dd}})[0].ok());
}

// A lease ends at its expiry: releasing it later is NotFound, and the server holds nothing.
TEST(UcxPathTest, ExpiredLeaseIsGone) {
  std::unique_ptr<PagodadProcess> server = StartServer();
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Client> ucx = UcxClient(*server, "t");
  ASSERT_NE(ucx, nullptr);
  const PageLayout l = SmallLayout();
  std::vector<uint8_t> data = PageBytes(PageKey{3, 3}, l.PageBytes());
  ASSERT_TRUE(ucx->Put({{PageKey{3, 3}, l.Id(), data}})[0].ok());
  RawUcx raw(*server);
  ASSERT_TRUE(raw.Open().ok());
  v1::UcxLease lease = AcquireOne(raw.stub(), "t", PageKey{3, 3}, /*lease_ms=*/1);
  ASSERT_EQ(lease.status().code(), 0);
  v1::UcxLease other = AcquireOne(raw.stub(), "t", PageKey{3, 3});
  ASSERT_EQ(other.status().code(), 0);
  EXPECT_EQ(ReleaseOne(raw.stub(), "intruder", other.lease()),
            static_cast<int>(absl::StatusCode::kNotFound));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(ReleaseOne(raw.stub(), "t", other.lease()), 0);  // still live: released now
  EXPECT_EQ(ReleaseOne(raw.stub(), "t", lease.lease()),
            static_cast<int>(absl::StatusCode::kNotFound));
  EXPECT_EQ(ReleaseOne(raw.stub(), "t", other.lease()),
            static_cast<int>(absl::StatusCode::kNotFound));  // once only
}

// Leases of 1 ms while a writer keeps replacing the pages: reads race with slot reuse. Whatever
// happens, a page that comes back OK holds exactly the bytes of one version that was written.
TEST(UcxPathTest, ShortLeasesUnderChurnNeverYieldWrongBytes) {
  PagodadProcess::Options o;
  o.config_yaml =
      absl::StrReplaceAll(TestConfigYaml(), {{"http_port: 0}", "http_port: 0, ucx_lease_ms: 1}"},
                                             {"host_bytes: 64MiB", "host_bytes: 2MiB"}});
  std::unique_ptr<PagodadProcess> server = StartServer(o);
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Client> writer = UcxClient(*server, "t");
  std::unique_ptr<Client> reader = UcxClient(*server, "t");
  ASSERT_NE(writer, nullptr);
  ASSERT_NE(reader, nullptr);
  const PageLayout l{DType::kFp16, 8, 128, 16};  // 64 KiB pages
  constexpr int kKeys = 32;  // fills the 2 MiB host tier: every Put reuses a slot
  auto version = [&](int key, uint64_t v) {
    std::vector<uint8_t> b = PageBytes(PageKey{5, uint64_t(key)}, l.PageBytes(), v);
    memcpy(b.data(), &v, sizeof(v));  // the version is readable from the page itself
    return b;
  };
  std::atomic<bool> stop{false};
  std::atomic<int> wrong{0}, ok_reads{0}, lost{0};
  std::thread w([&] {
    for (uint64_t v = 1; v < 30; ++v) {
      for (int k = 0; k < kKeys; ++k) {
        (void)writer->Remove({PageKey{5, uint64_t(k)}});
        std::vector<uint8_t> b = version(k, v);
        (void)writer->Put({{PageKey{5, uint64_t(k)}, l.Id(), b}});
      }
    }
    stop = true;
  });
  std::vector<uint8_t> out(l.PageBytes());
  while (!stop) {
    for (int k = 0; k < kKeys; ++k) {
      GetResult r = reader->Get({{PageKey{5, uint64_t(k)}, absl::MakeSpan(out)}})[0];
      if (absl::IsDataLoss(r.status)) lost++;
      if (!r.status.ok()) continue;
      ok_reads++;
      uint64_t v;
      memcpy(&v, out.data(), sizeof(v));
      if (v == 0 || v >= 30 || out != version(k, v)) wrong++;
    }
  }
  w.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(ok_reads.load(), 0);
  std::printf("churn: %d verified reads, %d refused as DataLoss\n", ok_reads.load(), lost.load());
}

// A server without UCX: the client asked for it but moves bytes on the stream path, byte-exact.
TEST(UcxPathTest, ServerWithoutUcxFallsBackToGrpcBytes) {
  PagodadProcess::Options o;
  o.extra_args = {"--ucx", "false"};
  std::unique_ptr<PagodadProcess> server = StartServer(o);
  ASSERT_NE(server, nullptr);
  RawUcx raw(*server);
  EXPECT_TRUE(absl::IsFailedPrecondition(raw.Open()));
  std::unique_ptr<Client> c = UcxClient(*server, "t");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->data_path(), "stream");
  const PageLayout l = LargeLayout();
  std::vector<uint8_t> data = PageBytes(PageKey{4, 4}, l.PageBytes());
  ASSERT_TRUE(c->Put({{PageKey{4, 4}, l.Id(), data}})[0].ok());
  std::vector<uint8_t> out(data.size());
  GetResult r = c->Get({{PageKey{4, 4}, absl::MakeSpan(out)}})[0];
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(out, data);
}

}  // namespace
}  // namespace pagoda::testing
